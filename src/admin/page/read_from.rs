//! Where the page's reads came from, with `[support] database_url` set: said above what
//! was read, quietly while the standby has replayed all the primary wrote, plainly while
//! it is behind (how far, how old its newest change is, whether replay is paused) or
//! could not be used and the primary answered instead. Without a standby, nothing.

use maud::{html, Markup};

use crate::store::standby::ReadFrom;

pub(super) fn note(from: &ReadFrom) -> Markup {
    match from {
        ReadFrom::Primary => html! {},
        ReadFrom::Standby(_) if from.is_current() => {
            html! { p.muted #read-from role="status" { (from) } }
        }
        _ => html! { p.notice.bad #read-from role="status" { (from) } },
    }
}
