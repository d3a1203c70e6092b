//! The dashboard's files, compiled into the binary: its pages, script and style sheet
//! (coordinator/assets/dashboard/) and uPlot (coordinator/assets/uplot/, vendored from npm by
//! scripts/fetch-uplot.sh, its version in VERSION). Nothing is fetched when cbsweep runs.

/// The overview and the sweep page (one shell; the script draws what the path asks for).
pub(crate) const PAGE: &str = include_str!("../../assets/dashboard/page.html");
/// The login form.
pub(crate) const LOGIN: &str = include_str!("../../assets/dashboard/login.html");

/// The file served at /assets/NAME: its content type and bytes.
pub(crate) fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match name {
        "dashboard.js" => ("text/javascript; charset=utf-8", include_bytes!("../../assets/dashboard/dashboard.js")),
        "dashboard.css" => ("text/css; charset=utf-8", include_bytes!("../../assets/dashboard/dashboard.css")),
        "uPlot.iife.min.js" => ("text/javascript; charset=utf-8", include_bytes!("../../assets/uplot/uPlot.iife.min.js")),
        "uPlot.min.css" => ("text/css; charset=utf-8", include_bytes!("../../assets/uplot/uPlot.min.css")),
        "uPlot-LICENSE" => ("text/plain; charset=utf-8", include_bytes!("../../assets/uplot/LICENSE")),
        _ => return None,
    })
}
