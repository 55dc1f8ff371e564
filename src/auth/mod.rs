//! Who is calling: server-side sessions (cookie → row), OpenID Connect sign-in, API bearer
//! tokens, the dev sign-in of `twokey demo`, and the signed review links mailed to approvers.
//! Every browser sign-in ends in [`session::start`] with a verified principal.

pub mod bearer;
pub mod oidc;
pub mod review_token;
pub mod session;
