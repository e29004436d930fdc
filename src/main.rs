//! `ccstream`: the one binary. Each subcommand lives in its own file; this file only parses
//! the command line, builds the runtime and reports errors as one line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed memory for reuse: batch buffers are recycled instead of being
/// mapped, faulted in and unmapped for every batch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter, from the library the `mimalloc` crate links.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` (the same index in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[cfg(target_os = "linux")]
extern "C" {
    /// glibc's `prctl(2)` (variadic: the kernel takes four more `unsigned long`s).
    fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
}

/// `PR_SET_THP_DISABLE` (linux/prctl.h).
#[cfg(target_os = "linux")]
const PR_SET_THP_DISABLE: std::ffi::c_int = 41;

/// - Freed memory goes back to the OS after 1 s instead of mimalloc's 10 ms: batch buffers
///   freed between polls are reused instead of being returned and faulted in (zeroed) again
///   (`docs/performance.md`: a 1e6-call backfill spends 40 % less system time). A `replay`
///   and a backfill (`process --until-caught-up`) keep it until they exit: their phases and
///   files (read and fold, then build and encode the tables; an encoder per column of every
///   file) free and allocate hundreds of MB, and returning it between them only means
///   faulting it in again (a 1e6-call backfill: −7 % wall time for +200 MB peak RSS).
/// - No transparent huge pages for the process (Linux): a first touch then zeroes 4 KiB,
///   not 2 MiB, and only the pages written are ever backed. On VMs that hand freed memory
///   back to the host, fresh memory costs milliseconds per MB, and huge pages doubled a
///   replay's system time and tripled a backfill's (`docs/performance.md`, "Transparent
///   huge pages off"). mimalloc reads its own THP option once, before `main`: the process
///   flag is what can still be set here.
///
/// The environment variable `MIMALLOC_PURGE_DELAY`, when set, wins; with
/// `MIMALLOC_ALLOW_THP` set, huge pages are left as the system has them.
fn tune_allocator(command: &Command) {
    let ends = match command {
        Command::Replay(_) => true,
        Command::Process(args) => args.until_caught_up,
        _ => false,
    };
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        let purge_delay_ms = if ends { -1 } else { 1000 };
        // SAFETY: mi_option_set only stores an option value; the value is valid.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, purge_delay_ms) };
    }
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Variadic arguments are passed as written: all four as `unsigned long`.
        let (on, zero): (std::ffi::c_ulong, std::ffi::c_ulong) = (1, 0);
        // SAFETY: PR_SET_THP_DISABLE takes a flag and three zeros (the kernel rejects
        // anything else) and only sets that flag on the process; failing (an old kernel)
        // changes nothing, so the result is ignored.
        let _ = unsafe { prctl(PR_SET_THP_DISABLE, on, zero, zero, zero) };
    }
}

mod config;
mod demo;
mod generate;
mod ingest;
mod log;
mod metrics_http;
mod output;
mod process;
mod replay;
mod run;
mod secret;
mod serve;
mod sql;

/// Event-sourced analytics for contact centers on Microsoft Teams.
#[derive(Debug, Parser)]
#[command(name = "ccstream", version, about, propagate_version = true)]
struct Cli {
    /// Log lines on stderr as text, or as JSON objects (one per line, with their fields)
    #[arg(long, global = true, env = "CCSTREAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Recompute every table from canonical events files (JSONL, gzip, Parquet)
    Replay(replay::ReplayArgs),
    /// Publish input to the event log
    #[command(subcommand)]
    Ingest(ingest::IngestCommand),
    /// Consume the event log and keep the tables current
    Process(process::ProcessArgs),
    /// Every role in one process, from the config file's [pipeline] section
    Run(run::RunArgs),
    /// Run SQL over the tables and metric views
    Sql(sql::SqlArgs),
    /// Serve SQL over HTTP and the Postgres wire to the configured principals
    Serve(serve::ServeArgs),
    /// Hash passwords and tokens for the [serve] principals
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Repair the embedded event log
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Generate synthetic contact-center traffic as canonical events
    Generate(generate::GenerateArgs),
    /// Generate a day of traffic, replay it and print a per-queue summary
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, filtered by RUST_LOG (default: ccstream's own at info, the
    // libraries' warnings).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,ccstream=info,ccstream_query=info,ccstream_ingest=info,ccstream_processor=info,ccstream_eventlog=info",
        )
    });
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    tune_allocator(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Replay(args) => replay::run(args).await.map(|_| ()),
            Command::Ingest(cmd) => ingest::run(cmd).await,
            Command::Process(args) => process::run(args).await.map(|_| ()),
            Command::Run(args) => run::run(args).await,
            Command::Sql(args) => sql::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Secret(cmd) => secret::run(cmd),
            Command::Log(cmd) => log::run(cmd),
            Command::Generate(args) => generate::run(args),
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause its parent already spells out
/// (DataFusion's errors print their sources themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `docs/operations.md` names every flag and environment variable of every command.
    #[test]
    fn operations_doc_lists_every_flag() {
        let doc = include_str!("../docs/operations.md");
        let mut missing = Vec::new();
        let cli = Cli::command();
        for top in cli.get_subcommands() {
            assert!(doc.contains(&format!("## `ccstream {}`", top.get_name())), "no section for {}", top.get_name());
        }
        // Nested commands (`ingest file`) are documented in their parent's section.
        let leaves = cli.get_subcommands().flat_map(|c| {
            if c.has_subcommands() {
                c.get_subcommands().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        });
        for sub in leaves {
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    if !doc.contains(&format!("`--{long}")) {
                        missing.push(format!("{} --{long}", sub.get_name()));
                    }
                }
                if let Some(env) = arg.get_env() {
                    if !doc.contains(&format!("`{}`", env.to_string_lossy())) {
                        missing.push(format!("{} {}", sub.get_name(), env.to_string_lossy()));
                    }
                }
                if arg.get_long().is_some() && arg.get_env().is_none() {
                    missing.push(format!("{} --{} has no env var", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "docs/operations.md lacks: {missing:?}");
    }
}
