//! Connected components of label maps and the post-processing built on them: keep the largest
//! component of a class, remove components smaller than a volume (TotalSegmentator's
//! `--largest-component` / `--remove-small` style clean-up).
//!
//! Labelling is a two-pass union-find over C-ordered `[d0, d1, d2]` voxels. The default
//! [`Connectivity::Faces`] (6 neighbours) is `scipy.ndimage.label`'s default structuring element,
//! which TotalSegmentator's post-processing uses; component numbers follow scipy's order (first
//! voxel in raster order), so "largest" breaks ties like `np.argmax` over scipy's counts.

/// Which neighbours touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// 6 face neighbours (scipy's default).
    Faces,
    /// 18: faces and edges.
    Edges,
    /// 26: faces, edges and corners.
    Corners,
}

impl Connectivity {
    /// The backward half of the neighbourhood: offsets `(a, b, c)` of already-visited voxels.
    fn backward(self) -> Vec<[isize; 3]> {
        let mut out = Vec::new();
        for a in -1..=1isize {
            for b in -1..=1isize {
                for c in -1..=1isize {
                    let order = (a, b, c);
                    if order >= (0, 0, 0) {
                        continue; // only neighbours earlier in raster order
                    }
                    let nonzero = [a, b, c].iter().filter(|v| **v != 0).count();
                    let keep = match self {
                        Connectivity::Faces => nonzero == 1,
                        Connectivity::Edges => nonzero <= 2,
                        Connectivity::Corners => true,
                    };
                    if keep {
                        out.push([a, b, c]);
                    }
                }
            }
        }
        out
    }
}

/// Components of the voxels where `inside` holds: per voxel its component number (0 outside,
/// 1… in order of each component's first voxel in raster order) and the voxel count of each
/// component (`counts[k - 1]` for component `k`).
///
/// # Panics
/// When `inside.len()` is not `dims[0]·dims[1]·dims[2]` (a caller bug, not user data).
pub fn label(inside: &[bool], dims: [usize; 3], conn: Connectivity) -> (Vec<u32>, Vec<u64>) {
    label_values(inside, false, dims, conn)
}

/// Components of every value of `values` except `background` at once: neighbours belong to one
/// component when their values are equal. Returns the per-voxel component number (0 on the
/// background, 1… in order of each component's first voxel in raster order) and each component's
/// voxel count. Restricted to one value, the components and their order are those of
/// [`label`] on that value's mask (scipy's order), so one pass serves every class of a label map.
///
/// # Panics
/// When `values.len()` is not `dims[0]·dims[1]·dims[2]` (a caller bug, not user data).
pub fn label_values<T: Copy + PartialEq>(
    values: &[T],
    background: T,
    dims: [usize; 3],
    conn: Connectivity,
) -> (Vec<u32>, Vec<u64>) {
    let n = dims[0] * dims[1] * dims[2];
    assert_eq!(values.len(), n, "{} values for dims {dims:?}", values.len());
    let offsets = conn.backward();
    // Provisional labels with union-find over them (parent[k] ≤ k).
    let mut provisional = vec![0u32; n];
    let mut parent: Vec<u32> = vec![0];
    fn find(parent: &mut [u32], mut k: u32) -> u32 {
        while parent[k as usize] != k {
            let up = parent[parent[k as usize] as usize];
            parent[k as usize] = up;
            k = up;
        }
        k
    }
    let [d0, d1, d2] = dims;
    for i in 0..d0 {
        for j in 0..d1 {
            for k in 0..d2 {
                let v = (i * d1 + j) * d2 + k;
                let value = values[v];
                if value == background {
                    continue;
                }
                let mut mine = 0u32;
                for o in &offsets {
                    let (ni, nj, nk) = (i as isize + o[0], j as isize + o[1], k as isize + o[2]);
                    if ni < 0 || nj < 0 || nk < 0 || nj >= d1 as isize || nk >= d2 as isize {
                        continue;
                    }
                    let u = (ni as usize * d1 + nj as usize) * d2 + nk as usize;
                    let theirs = provisional[u];
                    if theirs == 0 || values[u] != value {
                        continue;
                    }
                    if mine == 0 {
                        mine = find(&mut parent, theirs);
                    } else {
                        let (a, b) = (find(&mut parent, mine), find(&mut parent, theirs));
                        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                        parent[hi as usize] = lo;
                        mine = lo;
                    }
                }
                if mine == 0 {
                    mine = parent.len() as u32;
                    parent.push(mine);
                }
                provisional[v] = mine;
            }
        }
    }
    // Final numbers in order of first appearance (provisional labels grow in raster order).
    let mut number = vec![0u32; parent.len()];
    let mut counts = Vec::new();
    for p in provisional.iter_mut() {
        if *p == 0 {
            continue;
        }
        let root = find(&mut parent, *p) as usize;
        if number[root] == 0 {
            counts.push(0);
            number[root] = counts.len() as u32;
        }
        *p = number[root];
        counts[*p as usize - 1] += 1;
    }
    (provisional, counts)
}

/// Keeps only the largest component of each class in `classes` (others set to 0, background);
/// ties go to the component whose first voxel comes first in raster order. One labelling pass
/// serves every class. Returns the number of voxels removed.
pub fn keep_largest(
    labels: &mut [u8],
    dims: [usize; 3],
    classes: &[u8],
    conn: Connectivity,
) -> u64 {
    let (comp, counts) = label_values(labels, 0, dims, conn);
    // The class of each component, from its first voxel.
    let mut class_of = vec![0u8; counts.len()];
    for (&l, &k) in labels.iter().zip(&comp) {
        if k != 0 {
            class_of[k as usize - 1] = l;
        }
    }
    // Per class, the largest component (first on ties: components are numbered in raster order).
    let mut best: [Option<(u32, u64)>; 256] = [None; 256];
    for (i, (&c, &n)) in class_of.iter().zip(&counts).enumerate() {
        let slot = &mut best[c as usize];
        if slot.is_none_or(|(_, m)| n > m) {
            *slot = Some((i as u32 + 1, n));
        }
    }
    let mut wanted = [false; 256];
    for &c in classes {
        wanted[c as usize] = true;
    }
    let mut removed = 0;
    for (l, &k) in labels.iter_mut().zip(&comp) {
        if k != 0 && wanted[*l as usize] && best[*l as usize].is_some_and(|(b, _)| b != k) {
            *l = 0;
            removed += 1;
        }
    }
    removed
}

/// Removes (sets to 0) every component of a class in `classes` whose volume is below `min_ml`
/// millilitres, with `spacing` in mm along the dims. One labelling pass serves every class.
/// Returns the number of voxels removed.
pub fn remove_small(
    labels: &mut [u8],
    dims: [usize; 3],
    spacing: [f64; 3],
    classes: &[u8],
    min_ml: f64,
    conn: Connectivity,
) -> u64 {
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    let (comp, counts) = label_values(labels, 0, dims, conn);
    let small: Vec<bool> = counts.iter().map(|&n| (n as f64) * voxel_ml < min_ml).collect();
    let mut wanted = [false; 256];
    for &c in classes {
        wanted[c as usize] = true;
    }
    let mut removed = 0;
    for (l, &k) in labels.iter_mut().zip(&comp) {
        if k != 0 && wanted[*l as usize] && small[k as usize - 1] {
            *l = 0;
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain flood fill: the oracle for `label`.
    fn flood(inside: &[bool], dims: [usize; 3], conn: Connectivity) -> (Vec<u32>, Vec<u64>) {
        let n = inside.len();
        let mut out = vec![0u32; n];
        let mut counts = Vec::new();
        let mut all = conn.backward();
        all.extend(conn.backward().iter().map(|o| [-o[0], -o[1], -o[2]]));
        for start in 0..n {
            if !inside[start] || out[start] != 0 {
                continue;
            }
            counts.push(0u64);
            let id = counts.len() as u32;
            let mut stack = vec![start];
            out[start] = id;
            while let Some(v) = stack.pop() {
                counts[id as usize - 1] += 1;
                let (i, j, k) = (v / (dims[1] * dims[2]), (v / dims[2]) % dims[1], v % dims[2]);
                for o in &all {
                    let (a, b, c) = (i as isize + o[0], j as isize + o[1], k as isize + o[2]);
                    if a < 0 || b < 0 || c < 0 {
                        continue;
                    }
                    let (a, b, c) = (a as usize, b as usize, c as usize);
                    if a >= dims[0] || b >= dims[1] || c >= dims[2] {
                        continue;
                    }
                    let u = (a * dims[1] + b) * dims[2] + c;
                    if inside[u] && out[u] == 0 {
                        out[u] = id;
                        stack.push(u);
                    }
                }
            }
        }
        (out, counts)
    }

    /// A deterministic pseudo-random mask (xorshift), dense enough to make winding components.
    fn mask(dims: [usize; 3], seed: u64, density: u64) -> Vec<bool> {
        let mut s = seed | 1;
        (0..dims.iter().product::<usize>())
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s % 100 < density
            })
            .collect()
    }

    #[test]
    fn union_find_equals_flood_fill() {
        for (seed, dims) in [(1, [7, 9, 11]), (2, [1, 16, 5]), (3, [12, 1, 1]), (4, [6, 6, 6])] {
            for density in [20, 35, 55] {
                let m = mask(dims, seed, density);
                for conn in [Connectivity::Faces, Connectivity::Edges, Connectivity::Corners] {
                    assert_eq!(label(&m, dims, conn), flood(&m, dims, conn), "{dims:?} {conn:?}");
                }
            }
        }
    }

    #[test]
    fn one_pass_over_all_values_equals_a_pass_per_value() {
        let dims = [7, 9, 11];
        let (a, b) = (mask(dims, 5, 45), mask(dims, 6, 45));
        // Three classes interleaved so that equal neighbours of different classes abound.
        let values: Vec<u8> =
            a.iter().zip(&b).map(|(&x, &y)| u8::from(x) + 2 * u8::from(y)).collect();
        for conn in [Connectivity::Faces, Connectivity::Corners] {
            let (all, all_counts) = label_values(&values, 0, dims, conn);
            for c in 1..=3u8 {
                let inside: Vec<bool> = values.iter().map(|&v| v == c).collect();
                let (one, counts) = flood(&inside, dims, conn);
                // The components of class c, renumbered in order of appearance, equal the flood.
                let mut renumber = std::collections::HashMap::new();
                let mapped: Vec<u32> = all
                    .iter()
                    .zip(&values)
                    .map(|(&k, &v)| {
                        if v != c {
                            return 0;
                        }
                        let next = renumber.len() as u32 + 1;
                        *renumber.entry(k).or_insert(next)
                    })
                    .collect();
                assert_eq!(mapped, one, "class {c} {conn:?}");
                let mut by_new: Vec<(u32, u64)> =
                    renumber.iter().map(|(&k, &n)| (n, all_counts[k as usize - 1])).collect();
                by_new.sort();
                assert_eq!(by_new.into_iter().map(|(_, n)| n).collect::<Vec<_>>(), counts);
            }
        }
    }

    #[test]
    fn diagonal_voxels_touch_only_with_corners() {
        let dims = [2, 2, 2];
        let mut m = vec![false; 8];
        m[0] = true; // (0,0,0)
        m[7] = true; // (1,1,1)
        assert_eq!(label(&m, dims, Connectivity::Faces).1, vec![1, 1]);
        assert_eq!(label(&m, dims, Connectivity::Edges).1, vec![1, 1]);
        assert_eq!(label(&m, dims, Connectivity::Corners).1, vec![2]);
    }

    #[test]
    fn keep_largest_and_remove_small_touch_only_their_classes() {
        // Class 1: blobs of 3 and 2 voxels; class 2: one voxel.
        let dims = [1, 1, 9];
        let mut l = vec![1, 1, 1, 0, 1, 1, 0, 2, 0];
        assert_eq!(keep_largest(&mut l, dims, &[1], Connectivity::Faces), 2);
        assert_eq!(l, vec![1, 1, 1, 0, 0, 0, 0, 2, 0]);
        // 1 mm³ voxels: 0.001 ml each; remove components under 0.0025 ml (the 2-voxel class-2 one
        // is 1 voxel here).
        let mut l = vec![1, 1, 1, 0, 1, 1, 0, 2, 0];
        assert_eq!(remove_small(&mut l, dims, [1.0; 3], &[1, 2], 0.0025, Connectivity::Faces), 3);
        assert_eq!(l, vec![1, 1, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn ties_keep_the_first_component() {
        let dims = [1, 1, 5];
        let mut l = vec![3, 3, 0, 3, 3];
        keep_largest(&mut l, dims, &[3], Connectivity::Faces);
        assert_eq!(l, vec![3, 3, 0, 0, 0]);
    }
}
