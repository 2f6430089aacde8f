//! 3-D window bookkeeping of the Swin transformer, exactly as MONAI `swin_unetr.py` does it:
//! partition/reverse, cyclic shift, padding, the shifted-window mask and the relative position
//! index. Composed from differentiable candle ops (or constants), so every device runs the same
//! code and there is no kernel of ours.
mod op;

pub use op::{
    pad_to_windows, relative_position_index, relative_position_index_sliced, roll3d,
    shifted_window_mask, window_and_shift, window_partition, window_reverse,
};
