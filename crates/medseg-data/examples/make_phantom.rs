//! Writes the default phantom data set: `cargo run -p medseg-data --example make_phantom -- <dir> [seed]`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "phantom".into());
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let cfg = medseg_data::phantom::PhantomConfig { seed, ..Default::default() };
    let t = std::time::Instant::now();
    let json = medseg_data::phantom::generate(&dir, &cfg)?;
    println!("wrote {} in {:.2?}", json.display(), t.elapsed());
    Ok(())
}
