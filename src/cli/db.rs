//! `dispatcher db grants`: the SQL that sets up the least-privilege roles (README,
//! "Setting up PostgreSQL"); the SQL itself is `store::grants`'s. Needs no configuration
//! and connects to nothing.

use std::io::Write;

use clap::Subcommand;

use crate::store::grants::{self, DbRoles};

#[derive(Subcommand)]
pub enum DbCommand {
    /// Print the GRANTs for the owner, the daemon, the enrollment flow and support's CLI;
    /// run them as the owner after every `dispatcher migrate`.
    Grants {
        /// The role that owns schema dispatcher and runs `dispatcher migrate`.
        #[arg(long)]
        owner: String,
        /// The role `dispatcher run` connects as.
        #[arg(long)]
        daemon: String,
        /// The enrollment flow's role: INSERT into the outbox, nothing else.
        #[arg(long)]
        producer: String,
        /// Support's read-only role (`dispatcher deliveries list|show`, `dispatcher audit`).
        #[arg(long)]
        support: String,
    },
}

pub fn run(command: DbCommand, out: &mut impl Write) -> anyhow::Result<()> {
    match command {
        DbCommand::Grants {
            owner,
            daemon,
            producer,
            support,
        } => {
            let sql = grants::grants(&DbRoles {
                owner: &owner,
                daemon: &daemon,
                producer: &producer,
                support: &support,
            })?;
            out.write_all(sql.as_bytes())?;
            Ok(())
        }
    }
}
