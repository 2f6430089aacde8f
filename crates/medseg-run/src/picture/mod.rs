//! The run's pictures, drawn on an RGB [`Canvas`] with an embedded 8×8 bitmap font and encoded
//! as PNG: line plots with axes, numbered ticks, axis labels, a title and a legend
//! ([`line_plot`]), and figures of three orthogonal mid-slices per row with label overlays, row
//! titles, orientation letters and a class legend ([`slice_figure`]; [`slice_figure_world`]
//! samples the panels along world directions, for any grid orientation).
mod canvas;
mod plot;
mod slices;

pub use canvas::{Canvas, PALETTE, class_colour};
pub use plot::{PlotSpec, Series, line_plot, nice_ticks};
pub use slices::{
    Figure, Row, View, WorldPanel, WorldView, slice_figure, slice_figure_world, slice_index,
    world_panel,
};
