//! Writes a phantom data set:
//! `cargo run -p medseg-data --example make_phantom -- <dir> [seed] [n_cases] [n_validation]`
//! (defaults: `phantom`, 0, 12, 2 — the data set `cargo xtask train` generates). Case `n` depends
//! only on `(seed, n)`, so a larger `n_cases` extends the default set with new cases.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "phantom".into());
    let default = medseg_data::phantom::PhantomConfig::default();
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(default.seed);
    let n_cases = args.next().map(|s| s.parse()).transpose()?.unwrap_or(default.n_cases);
    let n_validation = args.next().map(|s| s.parse()).transpose()?.unwrap_or(default.n_validation);
    let cfg = medseg_data::phantom::PhantomConfig { seed, n_cases, n_validation, ..default };
    let t = std::time::Instant::now();
    let json = medseg_data::phantom::generate(&dir, &cfg)?;
    println!("wrote {} in {:.2?}", json.display(), t.elapsed());
    Ok(())
}
