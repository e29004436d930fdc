//! `ccstream log`: the operator's tools for the embedded FileLog.

use anyhow::{bail, Context, Result};
use ccstream_eventlog::file::{truncate_partition, FileLogConfig};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Drop a partition's records from an offset on (the repair for a damaged segment; the
    /// cut bytes are kept beside the segment as SEGMENT.cut-OFFSET)
    Truncate(TruncateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TruncateArgs {
    /// The FileLog (`file://DIR` or a path); no process may be appending to it
    #[arg(long, env = "CCSTREAM_LOG")]
    log: String,
    /// The partition
    #[arg(long, env = "CCSTREAM_LOG_PARTITION")]
    partition: u32,
    /// The first offset to drop (at or below the damaged record's)
    #[arg(long, env = "CCSTREAM_LOG_OFFSET")]
    offset: u64,
}

pub(crate) fn run(cmd: LogCommand) -> Result<()> {
    match cmd {
        LogCommand::Truncate(args) => {
            if args.log.starts_with("kafka://") {
                bail!("`ccstream log truncate` repairs a FileLog; a Kafka topic is the broker's to manage");
            }
            let config = FileLogConfig::from_url(&args.log)?;
            let cut = truncate_partition(&config.dir, args.partition, args.offset)
                .with_context(|| format!("truncating partition {} of {}", args.partition, config.dir.display()))?;
            tracing::info!(
                partition = args.partition,
                offset = args.offset,
                bytes = cut,
                "partition truncated; the cut bytes are kept beside the segment"
            );
        }
    }
    Ok(())
}
