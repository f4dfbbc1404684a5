//! `restatus reseal`: seal every record with the keyring's current key, with a progress count.

use std::{io::Write, time::Duration};

use crate::store::{Resealed, Store, StoreError};

/// How long one Redis call of the command may take: a batch of a thousand records.
const BUDGET: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("could not reseal the records")]
    Store(#[from] StoreError),
    #[error("{} records could not be opened with the keyring (first: {})", .0.len(), .0.first().map_or("", String::as_str))]
    Unreadable(Vec<String>),
}

/// Seals every record of `store` sealed with an older key with its keyring's current key, and
/// with `seal_plaintext` the records in clear too (only counts with `dry_run`), writing a
/// progress line to `progress` after each batch and a summary at the end. Fails when some
/// record could not be opened, after doing all the others.
pub async fn reseal(
    store: &Store,
    dry_run: bool,
    seal_plaintext: bool,
    progress: &mut impl Write,
) -> Result<Resealed, ResealError> {
    let (verb, seal) = if dry_run {
        ("would reseal", "would seal")
    } else {
        ("resealed", "sealed")
    };
    let line = |done: &Resealed| {
        let clear = if seal_plaintext {
            format!("{seal} {} in clear", done.sealed_from_clear)
        } else {
            format!(
                "left {} in clear (--seal-plaintext seals them)",
                done.left_in_clear
            )
        };
        format!(
            "{} records scanned: {verb} {} sealed with an older key, {clear}, {} already sealed with the current key, {} written meanwhile, {} unreadable",
            done.scanned,
            done.resealed,
            done.current,
            done.changed,
            done.failed.len()
        )
    };
    let done = store
        .reseal(dry_run, seal_plaintext, BUDGET, |done| {
            // Progress is best effort: a closed stderr does not stop the work.
            let _ = writeln!(progress, "{}", line(done));
        })
        .await?;
    let _ = writeln!(progress, "done: {}", line(&done));
    if !done.failed.is_empty() {
        return Err(ResealError::Unreadable(done.failed.clone()));
    }
    Ok(done)
}
