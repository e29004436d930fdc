//! Microsoft Graph sources (the Extend model), sans-IO: call records ([`callrecord`]),
//! Direct Routing and PSTN logs ([`logs`]), change and lifecycle notifications
//! ([`notify`]), calling-bot notifications ([`bot`]) and presence ([`presence`]). The
//! fetcher, subscription manager and pollers around them live in `crate::listen::graph`.

pub mod bot;
pub mod callrecord;
pub mod logs;
pub mod notify;
pub mod presence;
