//! The fuzz targets' smoke run in `cargo test` (issue 15): every target of
//! `fuzz/` gets its committed seeds and 10000 deterministic mutations of them
//! (bit flips, truncations, duplicated and spliced slices, interesting bytes),
//! through the same entry points libFuzzer calls (`rkubelet::fuzzing`). A
//! panic fails the test with the input that caused it. The coverage-guided
//! runs under AddressSanitizer are `scripts/fuzz.sh` (its ASan build takes
//! about 30 min from nothing on 2 cores, more than the CI budget allows).

use std::path::Path;

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: &[&[u8]] = &[b"\0", b"\xff", b"%", b"%a\xc3\xa9", b"..", b"/", b"\n", b"{", b"[", b"\"", b"-1", b"9223372036854775807", b"18446744073709551616", b"1e999999", b"\xc3", b":", b"*"];

fn mutate(seed: &[u8], others: &[Vec<u8>], r: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + r.below(4) {
        match r.below(6) {
            0 if !v.is_empty() => {
                let i = r.below(v.len());
                v[i] ^= 1 << r.below(8);
            }
            1 if !v.is_empty() => v.truncate(r.below(v.len())),
            2 if !v.is_empty() => {
                let (a, b) = (r.below(v.len()), r.below(v.len()));
                let (lo, hi) = (a.min(b), a.max(b));
                let slice = v[lo..hi].to_vec();
                let at = r.below(v.len());
                v.splice(at..at, slice);
            }
            3 => {
                let ins = INTERESTING[r.below(INTERESTING.len())];
                let at = r.below(v.len() + 1);
                v.splice(at..at, ins.iter().copied());
            }
            4 if !others.is_empty() => {
                let o = &others[r.below(others.len())];
                let at = r.below(v.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&o[r.below(o.len() + 1)..]);
            }
            _ if !v.is_empty() => {
                let i = r.below(v.len());
                v.remove(i);
            }
            _ => v.push(r.next() as u8),
        }
    }
    v
}

fn smoke(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{target}: no seeds in {}", dir.display());
    let mut r = Rng(target.bytes().fold(15, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let mut inputs: Vec<Vec<u8>> = seeds.clone();
    for _ in 0..10_000 {
        let s = &seeds[r.below(seeds.len())];
        inputs.push(mutate(s, &seeds, &mut r));
    }
    for input in inputs {
        if std::panic::catch_unwind(|| f(&input)).is_err() {
            panic!("{target} panicked on {:?}", String::from_utf8_lossy(&input));
        }
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name), rkubelet::fuzzing::$name);
            }
        )*
    };
}

targets!(kubelet_request, spdy, websocket, resize, pod_manifest, kubelet_config, kubeconfig, cni, image, registry_auth, cri_log, kernel_files);
