//! restatus keeps the `.status` of Kubernetes objects in Redis and puts it back when an
//! object is deleted and created again.
//!
//! The modules form layers that import one way, down (see `ARCHITECTURE.md`; `hack/layers.sh`
//! checks it):
//!
//! - [`app`] builds the program from [`config`] and runs its parts;
//! - [`admission`] (the webhook), [`restore`] (the worker), [`resync`], [`certs`] and
//!   [`server`] are the parts; none of them imports another;
//! - [`cli`] holds the commands that run once over the store (`reseal`);
//! - [`store`] (Redis) and, below it, [`policy`] (decisions and the watch caches) serve the
//!   parts;
//! - [`telemetry`], [`patch`], [`limits`], [`error`], [`text`] and [`duration`] are the
//!   leaves.

pub mod admission;
pub mod app;
pub mod certs;
pub mod cli;
pub mod config;
pub mod duration;
pub mod error;
pub mod limits;
pub mod patch;
pub mod policy;
pub mod restore;
pub mod resync;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
