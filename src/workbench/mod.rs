//! The integration engineer's tools, run from the command line: `crossway mappings test`
//! (every sample against its expected output), `crossway mappings replay` (stored
//! messages under two mapping sets) and `crossway feeds profile` (what captured traffic
//! would get, and the rules that would make it apply). They drive the same translation
//! code the gateway runs (`hie`, `cbo`, `connector`), without a store write.

pub mod profile;
pub mod replay;
pub mod samples;
