//! The GitHub boundary.
//!
//! **Architecture invariant:** this is the only crate that knows GitHub's
//! JSON shapes and its signature scheme. Everything past it speaks
//! `hangar_types`.
//!
//! - `webhook`: signature check of a delivery (which yields a
//!   [`VerifiedDelivery`], the only way to get one) and parsing of the events
//!   hangar acts on.

pub mod webhook;

pub use webhook::{
    ContentType, DeliveryHeaders, Event, PayloadError, SignatureError, VerifiedDelivery,
    WebhookSecret,
};
