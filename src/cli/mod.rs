//! Commands over the store that run once and exit, beside `serve`: they get plain values
//! (a connected [`Store`], options) and report what they did.

mod reseal;

pub use reseal::{ResealError, reseal};
