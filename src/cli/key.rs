//! `amimake key generate`: an ed25519 key pair for signing shared-cache
//! records. The secret goes to a file (mode 0600); the public key is printed
//! for `cache.trusted_keys`.

use std::io::{Read, Write};
use std::path::PathBuf;

use base64::Engine;
use clap::{Args, Subcommand};

use crate::cache::shared::public_key_text;
use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a signing key; print its public key.
    Generate {
        /// Where to write the secret key (never overwritten).
        #[arg(long, short = 'o', default_value = "amimake-signing.key")]
        out: PathBuf,
    },
}

pub fn run(args: KeyArgs) -> Result<i32> {
    match args.command {
        KeyCommand::Generate { out } => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .map_err(|e| Error::io("/dev/urandom", e))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut file = opts.open(&out).map_err(|e| Error::io(&out, e))?;
            writeln!(
                file,
                "{}",
                base64::engine::general_purpose::STANDARD.encode(seed)
            )
            .map_err(|e| Error::io(&out, e))?;
            eprintln!("secret key written to {} (keep it secret: CI gets it as AMIMAKE_SIGNING_KEY or AMIMAKE_SIGNING_KEY_FILE)", out.display());
            eprintln!(
                "add the public key to amimake.yaml:\n  cache:\n    trusted_keys: [\"{}\"]",
                public_key_text(&key)
            );
            println!("{}", public_key_text(&key));
            Ok(0)
        }
    }
}
