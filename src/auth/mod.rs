//! Who is calling: server-side sessions (cookie → row), the dev sign-in of `twokey demo`, and
//! the signed review links mailed to approvers. OpenID Connect sign-in plugs in here next to
//! the dev sign-in: both end in [`session::start`] with a verified principal.

pub mod review_token;
pub mod session;
