//! The benchmark chart: one panel per scenario, one bar per system under test, the bar at the
//! median with a line from the best run to the worst, the median written above it.
//!
//! Drawn with plotters into a PNG. Text needs a TrueType font, read from Debian's
//! `fonts-dejavu-core` (which `cargo xtask setup` installs).

use std::fs;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One system's figures in one scenario, in seconds.
pub struct Bar {
    /// Shown under the bar; `\n` starts a second line.
    pub label: String,
    pub median: f64,
    pub best: f64,
    pub worst: f64,
}

/// A scenario: its title and one bar per system.
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xaa, 0xaa, 0xaa),
    RGBColor(0x77, 0x77, 0x77),
];

/// Draws `panels` side by side under `title`, with `footer` (the machine) below, into `path`.
pub fn draw(path: &Path, title: &str, footer: &str, panels: &[Panel]) -> Result<(), String> {
    let font = fs::read(FONT).map_err(|e| {
        format!("no chart: cannot read the font {FONT} ({e}); install fonts-dejavu-core")
    })?;
    // plotters keeps the font for the life of the process; this runs once per benchmark.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("no chart: {FONT} is not a usable TrueType font"))?;
    let width = (420 * panels.len() as u32).max(840);
    let root = BitMapBackend::new(path, (width, 520)).into_drawing_area();
    draw_on(&root, title, footer, panels).map_err(|e| format!("no chart: {e}"))?;
    root.present().map_err(|e| format!("no chart: {e}"))
}

fn draw_on(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    footer: &str,
    panels: &[Panel],
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(44);
    let (body, bottom) = rest.split_vertically(rest.dim_in_pixel().1 - 26);
    let centre = |area: &DrawingArea<BitMapBackend<'_>, Shift>| {
        let (w, h) = area.dim_in_pixel();
        (w as i32 / 2, h as i32 / 2)
    };
    let centred = Pos::new(HPos::Center, VPos::Center);
    top.draw_text(
        title,
        &("sans-serif", 20).into_font().color(&BLACK).pos(centred),
        centre(&top),
    )?;
    bottom.draw_text(
        footer,
        &("sans-serif", 13).into_font().color(&BLACK).pos(centred),
        centre(&bottom),
    )?;
    for (area, panel) in body
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        draw_panel(area, panel)?;
    }
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = panel.bars.len().max(1);
    let top = panel.bars.iter().map(|b| b.worst).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..n as f64, 0.0..top.max(0.1))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("client write gap (s)")
        .y_label_formatter(&|v| match top {
            t if t < 1.0 => format!("{v:.2}"),
            t if t < 10.0 => format!("{v:.1}"),
            _ => format!("{v:.0}"),
        })
        .draw()?;
    for (i, bar) in panel.bars.iter().enumerate() {
        let x = i as f64;
        let colour = COLOURS[i % COLOURS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, bar.median)],
            colour.filled(),
        )))?;
        chart.draw_series(std::iter::once(ErrorBar::new_vertical(
            x + 0.5,
            bar.best,
            bar.median,
            bar.worst,
            BLACK.stroke_width(2),
            12,
        )))?;
        let above = chart.backend_coord(&(x + 0.5, bar.worst));
        area.draw_text(
            &format!("{:.2} s", bar.median),
            &("sans-serif", 14)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
            relative(area, (above.0, above.1 - 4)),
        )?;
        let below = chart.backend_coord(&(x + 0.5, 0.0));
        for (line, text) in bar.label.lines().enumerate() {
            area.draw_text(
                text,
                &("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
                relative(area, (below.0, below.1 + 6 + 16 * line as i32)),
            )?;
        }
    }
    Ok(())
}

/// A point of the whole image in `area`'s own coordinates.
fn relative(area: &DrawingArea<BitMapBackend<'_>, Shift>, (x, y): (i32, i32)) -> (i32, i32) {
    let (x0, y0) = area.get_base_pixel();
    (x - x0, y - y0)
}
