//! `ccstream secret`: the hashes a `[[serve.principals]]` entry stores instead of a
//! password or token.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use ccstream_query::access::{hash_token, new_token, ScramVerifier};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Read a password or token on stdin (one line) and print its hash for the config
    Hash(HashArgs),
    /// Print a new random bearer token and, on the next line, its hash for `token_hash`
    NewToken,
}

#[derive(Debug, Args)]
pub(crate) struct HashArgs {
    /// What the secret is for: `password` (SCRAM-SHA-256 verifier for `password_hash`) or
    /// `token` (Argon2id for `token_hash`)
    #[arg(long = "for", env = "CCSTREAM_SECRET_FOR", value_enum, default_value_t = Purpose::Password)]
    pub(crate) purpose: Purpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Purpose {
    Password,
    Token,
}

pub(crate) fn run(cmd: SecretCommand) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        SecretCommand::Hash(args) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the secret from stdin")?;
            let secret = line.trim_end_matches(['\n', '\r']);
            if secret.is_empty() {
                bail!("empty secret: write the password or token to stdin, e.g. `printf %s \"$PW\" | ccstream secret hash`");
            }
            let hash = match args.purpose {
                Purpose::Password => ScramVerifier::new(secret).encode(),
                Purpose::Token => hash_token(secret),
            };
            writeln!(out, "{hash}")?;
        }
        SecretCommand::NewToken => {
            let token = new_token();
            writeln!(out, "{token}\n{}", hash_token(&token))?;
        }
    }
    Ok(())
}
