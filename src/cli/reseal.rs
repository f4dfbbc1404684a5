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

/// Seals every record of `store` with its keyring's current key (only counts with `dry_run`),
/// writing a progress line to `progress` after each batch and a summary at the end. Fails when
/// some record could not be opened, after doing all the others.
pub async fn reseal(
    store: &Store,
    dry_run: bool,
    progress: &mut impl Write,
) -> Result<Resealed, ResealError> {
    let verb = if dry_run { "would reseal" } else { "resealed" };
    let line = |done: &Resealed| {
        format!(
            "{} records scanned: {verb} {}, {} already sealed with the current key, {} written meanwhile, {} unreadable",
            done.scanned,
            done.resealed,
            done.current,
            done.changed,
            done.failed.len()
        )
    };
    let done = store
        .reseal(dry_run, BUDGET, |done| {
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
