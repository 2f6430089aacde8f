//! Integration tests of medseg-pretrain (one binary; tiny configs).
// Pretext transforms and losses against the research-code goldens (tools/golden/ssl_golden.py).
mod golden;
// Loss gradients against finite differences; every SslHead variable receives a gradient.
mod gradients;
// The loop: resume exactness, outputs, bad inputs.
mod run;
// `load_encoder` / `train.init_from` on synthetic MONAI-style and medseg checkpoints.
mod init_from;
// Pretraining on the real CTs of ../shared/data (skipped when absent).
mod real_ct;
