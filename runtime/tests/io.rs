//! Tensor files (.npy / .npz) and state / params JSON.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use losslang_compiler::value::{DType, Data, Tensor};
use losslang_runtime::io::{DataError, read_npy, read_npz, write_npy, write_npy_f32};
use losslang_runtime::state_file::{
    JsonValue, ParamValue, parse_param_assignment, parse_params_json, parse_state_json,
    state_to_json, write_json_atomic,
};
use miette::Diagnostic;
use npyz::WriterBuilder;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// A .npy file with the given header dict text (padded as numpy does) and raw data.
fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let hlen = total - 10;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(hlen as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

fn dict(descr: &str, fortran: bool, shape: &str) -> String {
    let f = if fortran { "True" } else { "False" };
    format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}")
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample(dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let shape = shape.to_vec();
    match dtype {
        DType::F32 | DType::F64 => Tensor::from_f64(
            dtype,
            shape,
            (0..n).map(|k| k as f64 * 0.25 - 1.5).collect(),
        ),
        DType::I64 => Tensor::from_i64(
            shape,
            (0..n)
                .map(|k| {
                    if k == 0 {
                        i64::MIN
                    } else {
                        (k as i64 - 2) * 1_000_000_007
                    }
                })
                .collect(),
        ),
        DType::Bool => Tensor::from_bool(shape, (0..n).map(|k| k % 3 == 1).collect()),
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn code(e: &DataError) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// .npy round trips
// ---------------------------------------------------------------------------

#[test]
fn npy_round_trip_every_dtype_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let shapes: [&[usize]; 5] = [&[], &[0], &[3], &[2, 3], &[2, 0, 4]];
    for dtype in [DType::F32, DType::F64, DType::I64, DType::Bool] {
        for shape in shapes {
            let t = sample(dtype, shape);
            let p = dir.path().join(format!("{dtype}_{}.npy", shape.len()));
            write_npy(&p, &t).unwrap();
            let bytes = fs::read(&p).unwrap();
            assert_eq!(&bytes[..6], b"\x93NUMPY");
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0, "data must start 64-byte aligned");
            assert_eq!(bytes[10 + hlen - 1], b'\n');
            let itemsize = match dtype {
                DType::F32 => 4,
                DType::F64 | DType::I64 => 8,
                DType::Bool => 1,
            };
            assert_eq!(bytes.len(), 10 + hlen + t.len() * itemsize);

            let back = read_npy(&p, "x").unwrap();
            assert_eq!(back, t, "dtype {dtype} shape {shape:?}");

            // An independent reader agrees on the header.
            let f = npyz::NpyFile::new(&bytes[..]).unwrap();
            let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            assert_eq!(f.shape(), &want[..]);
            match dtype {
                DType::F32 => {
                    let v: Vec<f32> = f.into_vec().unwrap();
                    assert_eq!(
                        v,
                        t.to_f64_vec().iter().map(|&x| x as f32).collect::<Vec<_>>()
                    );
                }
                DType::F64 => assert_eq!(f.into_vec::<f64>().unwrap(), t.to_f64_vec()),
                DType::I64 => {
                    let Data::I(want) = &t.data else {
                        unreachable!()
                    };
                    assert_eq!(&f.into_vec::<i64>().unwrap(), want);
                }
                DType::Bool => {
                    let Data::B(want) = &t.data else {
                        unreachable!()
                    };
                    assert_eq!(&f.into_vec::<bool>().unwrap(), want);
                }
            }
        }
    }
    // Nothing but the written files is left in the directory.
    assert!(files_in(dir.path()).iter().all(|n| n.ends_with(".npy")));
}

#[test]
fn write_npy_f32_rounds_to_float32_whatever_the_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.npy");
    let t = Tensor::from_f64(DType::F64, vec![2, 2], vec![0.1, -1e-3, 3.0, 1e40]);
    write_npy_f32(&p, &t).unwrap();
    let back = read_npy(&p, "g").unwrap();
    assert_eq!(back.dtype, DType::F32);
    assert_eq!(back.shape, vec![2, 2]);
    assert_eq!(
        back.to_f64_vec(),
        vec![
            f64::from(0.1f32),
            f64::from(-1e-3f32),
            3.0,
            f64::INFINITY // 1e40 overflows f32
        ]
    );
    let text = fs::read(&p).unwrap();
    assert!(String::from_utf8_lossy(&text[..64]).contains("'descr': '<f4'"));

    // Ints and bools are written as floats too.
    let t = Tensor::from_i64(vec![3], vec![-1, 0, 7]);
    write_npy_f32(&p, &t).unwrap();
    let back = read_npy(&p, "g").unwrap();
    assert_eq!(
        back,
        Tensor::from_f64(DType::F32, vec![3], vec![-1.0, 0.0, 7.0])
    );
}

#[test]
fn write_npy_replaces_existing_file_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npy");
    write_npy(&p, &sample(DType::F64, &[2, 3])).unwrap();
    write_npy(&p, &sample(DType::I64, &[4])).unwrap();
    assert_eq!(read_npy(&p, "a").unwrap(), sample(DType::I64, &[4]));
    assert_eq!(files_in(dir.path()), vec!["a.npy".to_string()]);
}

#[test]
fn write_npy_rejects_inconsistent_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.npy");
    let t = Tensor {
        dtype: DType::F32,
        shape: vec![2, 3],
        data: Data::F(vec![1.0]),
    };
    let e = write_npy(&p, &t).unwrap_err();
    assert!(matches!(e, DataError::BadTensor { .. }), "{e}");
    assert!(!p.exists());
}

#[test]
fn write_into_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no/such/dir/x.npy");
    let e = write_npy(&p, &sample(DType::F32, &[2])).unwrap_err();
    assert!(matches!(e, DataError::WriteIo { .. }), "{e}");
    assert!(e.to_string().contains("x.npy"));
}

// ---------------------------------------------------------------------------
// .npy dtypes, byte orders, Fortran order
// ---------------------------------------------------------------------------

#[test]
fn reads_files_written_by_npyz() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.npy");
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[2, 3])
        .writer(fs::File::create(&p).unwrap())
        .begin_nd()
        .unwrap();
    w.extend([1.5f32, -2.0, 0.0, 4.25, 1e-3, 7.0]).unwrap();
    w.finish().unwrap();
    let t = read_npy(&p, "z").unwrap();
    assert_eq!(t.dtype, DType::F32);
    assert_eq!(t.shape, vec![2, 3]);
    assert_eq!(
        t.to_f64_vec(),
        [1.5f32, -2.0, 0.0, 4.25, 1e-3, 7.0]
            .iter()
            .map(|&x| f64::from(x))
            .collect::<Vec<_>>()
    );
}

#[test]
fn narrow_ints_widen_and_byte_orders_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, Tensor)> = vec![
        (
            "<i4",
            [-3i32, 0, 2_000_000_000]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            Tensor::from_i64(vec![3], vec![-3, 0, 2_000_000_000]),
        ),
        (
            ">i4",
            [-3i32, 0, 5].iter().flat_map(|x| x.to_be_bytes()).collect(),
            Tensor::from_i64(vec![3], vec![-3, 0, 5]),
        ),
        (
            "|u1",
            vec![0, 200, 255],
            Tensor::from_i64(vec![3], vec![0, 200, 255]),
        ),
        (
            "|i1",
            vec![0, 200, 255],
            Tensor::from_i64(vec![3], vec![0, -56, -1]),
        ),
        (
            "<u2",
            [1u16, 65535, 7]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            Tensor::from_i64(vec![3], vec![1, 65535, 7]),
        ),
        (
            ">i8",
            [i64::MIN, -1, 42]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect(),
            Tensor::from_i64(vec![3], vec![i64::MIN, -1, 42]),
        ),
        (
            ">f4",
            [0.5f32, -1.25, 3.0]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect(),
            Tensor::from_f64(DType::F32, vec![3], vec![0.5, -1.25, 3.0]),
        ),
        (
            ">f8",
            [0.1f64, -1e300, 5e-324]
                .iter()
                .flat_map(|x| x.to_be_bytes())
                .collect(),
            Tensor::from_f64(DType::F64, vec![3], vec![0.1, -1e300, 5e-324]),
        ),
        (
            "<f2",
            // 1.0, -2.5, 65504 (max half)
            [0x3c00u16, 0xc100, 0x7bff]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            Tensor::from_f64(DType::F32, vec![3], vec![1.0, -2.5, 65504.0]),
        ),
        (
            "|b1",
            vec![0, 1, 1],
            Tensor::from_bool(vec![3], vec![false, true, true]),
        ),
    ];
    for (descr, data, want) in cases {
        let p = write_file(
            dir.path(),
            "t.npy",
            &npy_bytes(&dict(descr, false, "(3,)"), &data),
        );
        let got = read_npy(&p, "t").unwrap_or_else(|e| panic!("{descr}: {e}"));
        assert_eq!(got, want, "descr {descr}");
    }
}

#[test]
fn uint64_out_of_range_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = [1u64, u64::MAX]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let p = write_file(
        dir.path(),
        "u.npy",
        &npy_bytes(&dict("<u8", false, "(2,)"), &data),
    );
    let e = read_npy(&p, "u").unwrap_err();
    assert!(matches!(e, DataError::BadData { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("input `u`") && msg.contains("element 1"),
        "{msg}"
    );
}

#[test]
fn fortran_order_is_transposed_to_c_order() {
    let dir = tempfile::tempdir().unwrap();
    // C matrix [[1, 2, 3], [4, 5, 6]] stored column-major.
    let p = write_file(
        dir.path(),
        "f.npy",
        &npy_bytes(
            &dict("<f4", true, "(2, 3)"),
            &le_f32(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]),
        ),
    );
    let t = read_npy(&p, "f").unwrap();
    assert_eq!(t.shape, vec![2, 3]);
    assert_eq!(t.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    // 3-d: element (i, j, k) has value i*12 + j*4 + k (its C index).
    let (a, b, c) = (2usize, 3usize, 4usize);
    let mut fdata = vec![0i64; a * b * c];
    for i in 0..a {
        for j in 0..b {
            for k in 0..c {
                fdata[i + a * (j + b * k)] = (i * b * c + j * c + k) as i64;
            }
        }
    }
    let bytes: Vec<u8> = fdata.iter().flat_map(|x| x.to_le_bytes()).collect();
    let p = write_file(
        dir.path(),
        "f3.npy",
        &npy_bytes(&dict("<i8", true, "(2, 3, 4)"), &bytes),
    );
    let t = read_npy(&p, "f3").unwrap();
    assert_eq!(t, Tensor::from_i64(vec![2, 3, 4], (0..24).collect()));

    // 1-d and empty Fortran arrays are the same as C arrays.
    let p = write_file(
        dir.path(),
        "f1.npy",
        &npy_bytes(&dict("|b1", true, "(3,)"), &[1, 0, 1]),
    );
    assert_eq!(
        read_npy(&p, "f1").unwrap(),
        Tensor::from_bool(vec![3], vec![true, false, true])
    );
    let p = write_file(
        dir.path(),
        "f0.npy",
        &npy_bytes(&dict("<f8", true, "(3, 0)"), &[]),
    );
    assert_eq!(read_npy(&p, "f0").unwrap().shape, vec![3, 0]);
}

#[test]
fn header_variants_numpy_may_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = le_f32(&[1.0, 2.0]);
    // Double quotes, key order, Python 2 long ints, no trailing comma, version 2.0.
    let d = r#"{"shape": (2L,), "fortran_order": False, "descr": "<f4"}"#;
    let p = write_file(dir.path(), "h.npy", &npy_bytes(d, &data));
    assert_eq!(read_npy(&p, "h").unwrap().to_f64_vec(), vec![1.0, 2.0]);

    let d = dict("<f4", false, "(2,)");
    let mut v2 = Vec::new();
    v2.extend_from_slice(b"\x93NUMPY\x02\x00");
    let hlen = (12 + d.len() + 1).div_ceil(64) * 64 - 12;
    v2.extend_from_slice(&(hlen as u32).to_le_bytes());
    v2.extend_from_slice(d.as_bytes());
    v2.resize(12 + hlen - 1, b' ');
    v2.push(b'\n');
    v2.extend_from_slice(&data);
    let p = write_file(dir.path(), "v2.npy", &v2);
    assert_eq!(read_npy(&p, "v2").unwrap().to_f64_vec(), vec![1.0, 2.0]);
}

// ---------------------------------------------------------------------------
// hostile .npy files
// ---------------------------------------------------------------------------

#[test]
fn bad_magic_is_not_npy() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("text.npy", &b"hello, world, this is not numpy"[..]),
        ("empty.npy", &b""[..]),
        ("short.npy", &b"\x93NUM"[..]),
    ] {
        let p = write_file(dir.path(), name, bytes);
        let e = read_npy(&p, "logits").unwrap_err();
        assert!(matches!(e, DataError::NotNpy { .. }), "{name}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("input `logits`"), "{msg}");
        assert!(msg.contains("not a .npy file (bad magic)"), "{msg}");
        assert!(msg.contains(name), "{msg}");
        assert_eq!(code(&e), "L6002");
        assert!(e.help().is_some());
    }
}

#[test]
fn truncated_data_is_reported_with_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let full = npy_bytes(&dict("<f8", false, "(10,)"), &[0u8; 80]);
    let p = write_file(dir.path(), "t.npy", &full[..full.len() - 40]);
    let e = read_npy(&p, "x").unwrap_err();
    match &e {
        DataError::Truncated {
            input,
            claimed_bytes,
            actual_bytes,
            ..
        } => {
            assert_eq!(input, "x");
            assert_eq!(*claimed_bytes, 80);
            assert_eq!(*actual_bytes, 40);
        }
        other => panic!("expected Truncated, got {other}"),
    }
    assert_eq!(
        e.to_string(),
        "input `x`: header claims shape [10] (80 bytes) but the file holds 40 bytes of data"
    );
    assert_eq!(code(&e), "L6003");
}

#[test]
fn truncated_header_is_an_error_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let full = npy_bytes(
        &dict("<f4", false, "(2, 2)"),
        &le_f32(&[1.0, 2.0, 3.0, 4.0]),
    );
    for cut in 0..full.len() {
        let p = write_file(dir.path(), "cut.npy", &full[..cut]);
        let e = read_npy(&p, "x").unwrap_err();
        assert!(
            matches!(
                e,
                DataError::NotNpy { .. }
                    | DataError::BadHeader { .. }
                    | DataError::Truncated { .. }
            ),
            "cut {cut}: {e}"
        );
    }
    let p = write_file(dir.path(), "full.npy", &full);
    assert_eq!(read_npy(&p, "x").unwrap().shape, vec![2, 2]);
}

#[test]
fn huge_claimed_shape_fails_fast_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(
        dir.path(),
        "huge.npy",
        &npy_bytes(&dict("<f4", false, "(1000000, 1000000)"), &[0u8; 16]),
    );
    let start = Instant::now();
    let e = read_npy(&p, "x").unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "input `x`: header claims shape [1000000, 1000000] (4.0 TB) but the file holds 16 bytes of data"
    );
}

#[test]
fn overflowing_or_invalid_shapes_are_header_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "(1099511627776, 1099511627776, 1099511627776)",
            "more elements",
        ),
        ("(4611686018427387904, 2)", "needs more bytes"),
        ("(99999999999999999999999,)", "too large"),
        ("(-1, 3)", "negative"),
        ("(2.5,)", "integer"),
        ("'abc'", "not a tuple"),
    ];
    for (shape, want) in cases {
        let p = write_file(
            dir.path(),
            "s.npy",
            &npy_bytes(&dict("<f4", false, shape), &[0u8; 16]),
        );
        let e = read_npy(&p, "x").unwrap_err();
        assert!(matches!(e, DataError::BadHeader { .. }), "{shape}: {e}");
        assert!(e.to_string().contains(want), "{shape}: {e}");
        assert!(
            e.to_string().starts_with("input `x`: bad .npy header"),
            "{e}"
        );
    }
}

#[test]
fn trailing_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(
        dir.path(),
        "tr.npy",
        &npy_bytes(&dict("<f4", false, "(2,)"), &le_f32(&[1.0, 2.0, 3.0])),
    );
    let e = read_npy(&p, "x").unwrap_err();
    assert!(matches!(e, DataError::TrailingData { .. }), "{e}");
    assert!(e.to_string().contains("12 bytes of data"), "{e}");
}

#[test]
fn unsupported_dtypes_name_the_input_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("'<c16'", "<c16", "complex"),
        ("'|S5'", "|S5", "byte strings"),
        ("'<U3'", "<U3", "unicode"),
        ("'|O'", "|O", "objects"),
        ("'<f16'", "<f16", "float width"),
        ("'<M8[ns]'", "<M8[ns]", "datetimes"),
        (
            "[('a', '<f4'), ('b', '<i8')]",
            "[('a', '<f4'), ('b', '<i8')]",
            "structured",
        ),
    ];
    for (descr_lit, descr, hint) in cases {
        let d = format!("{{'descr': {descr_lit}, 'fortran_order': False, 'shape': (2,), }}");
        let p = write_file(dir.path(), "d.npy", &npy_bytes(&d, &[0u8; 64]));
        let e = read_npy(&p, "mask").unwrap_err();
        match &e {
            DataError::UnsupportedDType { input, descr: got } => {
                assert_eq!(input, "mask");
                assert_eq!(got, descr);
            }
            other => panic!("{descr}: expected UnsupportedDType, got {other}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("input `mask`") && msg.contains(descr), "{msg}");
        assert!(msg.contains(hint), "{msg}");
        assert_eq!(code(&e), "L6004");
    }
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}2{}, }}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let cases: Vec<String> = vec![
        "not a dict".into(),
        "{'descr': '<f4', 'fortran_order': False}".into(),
        "{'descr': '<f4', 'shape': (2,)}".into(),
        "{'fortran_order': False, 'shape': (2,)}".into(),
        "{'descr': '<f4', 'fortran_order': 'no', 'shape': (2,)}".into(),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } trailing".into(),
        "{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}".into(),
        "{'descr': '<f4' 'fortran_order': False}".into(),
        "{1: 2}".into(),
        deep,
    ];
    for d in cases {
        let p = write_file(dir.path(), "m.npy", &npy_bytes(&d, &[0u8; 8]));
        let e = read_npy(&p, "x").unwrap_err();
        assert!(matches!(e, DataError::BadHeader { .. }), "{d:.60}: {e}");
    }
    // Unsupported format version; header length beyond the end of the file.
    let mut v = npy_bytes(&dict("<f4", false, "(2,)"), &[0u8; 8]);
    v[6] = 9;
    let p = write_file(dir.path(), "v.npy", &v);
    assert!(
        read_npy(&p, "x")
            .unwrap_err()
            .to_string()
            .contains("version 9.0")
    );
    let mut v = b"\x93NUMPY\x02\x00".to_vec();
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    v.extend_from_slice(b"{'descr'");
    let p = write_file(dir.path(), "l.npy", &v);
    let e = read_npy(&p, "x").unwrap_err();
    assert!(matches!(e, DataError::BadHeader { .. }), "{e}");
}

#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = npy_bytes(
        &dict("<f8", true, "(3, 4)"),
        &(0..12)
            .flat_map(|x| f64::from(x).to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..400 {
        let mut b = good.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        let p = write_file(dir.path(), "fuzz.npy", &b);
        let _ = read_npy(&p, "x"); // any result, but no panic
    }
}

#[test]
fn missing_file_and_directory_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = read_npy(&dir.path().join("nope.npy"), "x").unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    assert!(e.to_string().contains("nope.npy"));
    assert_eq!(code(&e), "L6001");
    let e = read_npy(dir.path(), "x").unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
}

// ---------------------------------------------------------------------------
// .npz
// ---------------------------------------------------------------------------

fn npz_with(path: &Path, extra: Option<(&str, Vec<u8>)>) {
    let mut npz = npyz::npz::NpzWriter::create(path).unwrap();
    let mut w = npz
        .array::<f32>("a", Default::default())
        .unwrap()
        .default_dtype()
        .shape(&[2, 3])
        .begin_nd()
        .unwrap();
    w.extend([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    w.finish().unwrap();
    let mut w = npz
        .array::<i64>("b", Default::default())
        .unwrap()
        .default_dtype()
        .shape(&[4])
        .begin_nd()
        .unwrap();
    w.extend([10i64, -20, 30, -40]).unwrap();
    w.finish().unwrap();
    if let Some((name, bytes)) = extra {
        let zw = npz.zip_writer();
        zw.start_file(name, npyz::zip::write::FileOptions::default())
            .unwrap();
        zw.write_all(&bytes).unwrap();
    }
    // Dropping the writer finishes the archive.
}

#[test]
fn npz_with_two_members() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.npz");
    npz_with(&p, Some(("README.txt", b"not an array".to_vec())));
    let members = read_npz(&p).unwrap();
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(
        members[0].1,
        Tensor::from_f64(DType::F32, vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    );
    assert_eq!(
        members[1].1,
        Tensor::from_i64(vec![4], vec![10, -20, 30, -40])
    );
}

#[test]
fn npz_bad_member_names_archive_and_member() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.npz");
    let full = npy_bytes(&dict("<f8", false, "(1000000, 1000000)"), &[0u8; 24]);
    npz_with(&p, Some(("c.npy", full)));
    let e = read_npz(&p).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("in.npz:c"), "{msg}");
    assert!(msg.contains("8.0 TB") && msg.contains("24 bytes"), "{msg}");

    npz_with(&p, Some(("d.npy", b"garbage".to_vec())));
    let e = read_npz(&p).unwrap_err();
    assert!(matches!(e, DataError::NotNpy { .. }), "{e}");
    assert!(e.to_string().contains("in.npz:d"), "{e}");
}

#[test]
fn npz_that_is_not_a_zip_or_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "x.npz", b"definitely not a zip archive");
    let e = read_npz(&p).unwrap_err();
    assert!(matches!(e, DataError::Npz { .. }), "{e}");
    assert!(e.to_string().contains("x.npz"));
    assert_eq!(code(&e), "L6006");

    let good = dir.path().join("good.npz");
    npz_with(&good, None);
    let bytes = fs::read(&good).unwrap();
    for cut in (0..bytes.len()).step_by(7) {
        let p = write_file(dir.path(), "cut.npz", &bytes[..cut]);
        assert!(read_npz(&p).is_err(), "cut {cut}");
    }
    assert!(read_npz(&dir.path().join("missing.npz")).is_err());
}

// ---------------------------------------------------------------------------
// state JSON
// ---------------------------------------------------------------------------

#[test]
fn parse_state_example() {
    let text = r#"{"threshold": 0.94, "step": 3, "lambdas": [10.0, 9.5, 9],
                   "table2d": [[1, 2, 3], [4, 5, 6]], "flag": true, "mask": [true, false],
                   "odd": ["nan", "inf", "-inf", 1.5], "empty": [], "empty2": [[], []]}"#;
    let s = parse_state_json(text, "state.json").unwrap();
    let get = |k: &str| s.get(k).unwrap_or_else(|| panic!("missing {k}"));
    assert_eq!(
        get("threshold"),
        &JsonValue {
            shape: vec![],
            values: vec![0.94],
            all_integers: false,
            is_bool: false
        }
    );
    assert_eq!(get("step").shape, Vec::<usize>::new());
    assert_eq!(get("step").values, vec![3.0]);
    assert!(get("step").all_integers);
    assert_eq!(get("lambdas").shape, vec![3]);
    assert!(!get("lambdas").all_integers);
    assert_eq!(get("table2d").shape, vec![2, 3]);
    assert_eq!(get("table2d").values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(get("table2d").all_integers);
    assert!(get("flag").is_bool && get("flag").values == vec![1.0]);
    assert!(get("mask").is_bool && get("mask").values == vec![1.0, 0.0]);
    assert!(!get("mask").all_integers);
    let odd = &get("odd").values;
    assert!(odd[0].is_nan() && odd[1] == f64::INFINITY && odd[2] == f64::NEG_INFINITY);
    assert_eq!(odd[3], 1.5);
    assert_eq!(get("empty").shape, vec![0]);
    assert_eq!(get("empty2").shape, vec![2, 0]);
}

#[test]
fn ragged_state_names_key_and_axis() {
    let e = parse_state_json(r#"{"table2d": [[1, 2], [3]]}"#, "s.json").unwrap_err();
    assert!(matches!(e, DataError::StateKey { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("state `table2d`"), "{msg}");
    assert!(msg.contains("axis 1"), "{msg}");
    assert!(
        msg.contains("table2d[1]") && msg.contains("table2d[0]"),
        "{msg}"
    );
    assert_eq!(code(&e), "L6008");

    for (text, axis) in [
        (r#"{"t": [[1, 2], 3]}"#, "axis 1"),
        (r#"{"t": [1, [2]]}"#, "axis 1"),
        (r#"{"t": [[[1], [2]], [[1], [2, 3]]]}"#, "axis 2"),
        (r#"{"t": [[], [1]]}"#, "axis 1"),
    ] {
        let e = parse_state_json(text, "s.json").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("state `t`") && msg.contains(axis),
            "{text}: {msg}"
        );
    }
}

#[test]
fn bad_state_elements() {
    for (text, want) in [
        (r#"{"t": [1, null]}"#, "`t[1]` is null"),
        (r#"{"t": {"a": 1}}"#, "an object"),
        (r#"{"t": "abc"}"#, "\"abc\""),
        (r#"{"t": [true, 2]}"#, "mixes"),
    ] {
        let e = parse_state_json(text, "s.json").unwrap_err();
        assert!(e.to_string().contains(want), "{text}: {e}");
    }
}

#[test]
fn broken_json_reports_line_and_column() {
    let text = "{\n  \"a\": 1,\n  \"b\": [1, 2,,]\n}";
    let e = parse_state_json(text, "state.json").unwrap_err();
    assert!(matches!(e, DataError::Json { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("`state.json`: invalid JSON at line 3, column"),
        "{msg}"
    );
    assert_eq!(code(&e), "L6007");

    let e = parse_state_json("{\"a\": 1", "s.json").unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");

    for top in ["[1, 2]", "3", "\"x\"", "null"] {
        let e = parse_state_json(top, "s.json").unwrap_err();
        assert!(
            e.to_string().contains("expected a JSON object"),
            "{top}: {e}"
        );
    }
    // Nesting beyond serde_json's recursion limit is an error, not a stack overflow.
    let deep = format!("{{\"t\": {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_state_json(&deep, "s.json").is_err());
}

const HARD_FLOATS: [f64; 12] = [
    0.1,
    1e-300,
    5e-324,
    1.7976931348623157e308,
    0.30000000000000004,
    -0.0,
    2.2250738585072014e-308,
    2.225073858507201e-308,
    9007199254740993.0,
    1.0 / 3.0,
    -123456.789e-7,
    std::f64::consts::PI,
];

#[test]
fn state_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut floats = HARD_FLOATS.to_vec();
    floats.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
    let n = floats.len();
    let state = vec![
        ("zeta".to_string(), Tensor::scalar_f(DType::F64, 0.1)),
        ("step".to_string(), Tensor::from_i64(vec![], vec![-7])),
        (
            "table".to_string(),
            Tensor::from_f64(DType::F64, vec![n], floats.clone()),
        ),
        (
            "grid".to_string(),
            Tensor::from_f64(DType::F64, vec![3, 4], HARD_FLOATS.to_vec()),
        ),
        (
            "on".to_string(),
            Tensor::from_bool(vec![2], vec![true, false]),
        ),
        (
            "big".to_string(),
            Tensor::from_i64(vec![2], vec![i64::MAX, i64::MIN]),
        ),
    ];
    let json = state_to_json(&state);
    // Keys in the order given, not sorted.
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["zeta", "step", "table", "grid", "on", "big"]);
    assert_eq!(json["step"], serde_json::json!(-7));
    assert_eq!(json["on"], serde_json::json!([true, false]));
    assert_eq!(json["table"][n - 3], serde_json::json!("nan"));
    assert_eq!(json["table"][n - 1], serde_json::json!("-inf"));
    assert_eq!(json["grid"].as_array().unwrap().len(), 3);

    let p = dir.path().join("state.json");
    write_json_atomic(&p, &json).unwrap();
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.ends_with("}\n"));
    assert!(
        text.contains("\n  \"zeta\": 0.1,\n"),
        "pretty printed: {text}"
    );
    let back = parse_state_json(&text, "state.json").unwrap();

    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let table = &back["table"];
    assert_eq!(table.shape, vec![n]);
    assert_eq!(bits(&table.values[..n - 3]), bits(&floats[..n - 3]));
    assert!(table.values[n - 3].is_nan());
    assert_eq!(table.values[n - 2], f64::INFINITY);
    assert_eq!(table.values[n - 1], f64::NEG_INFINITY);
    assert_eq!(back["grid"].shape, vec![3, 4]);
    assert_eq!(bits(&back["grid"].values), bits(&HARD_FLOATS));
    assert_eq!(back["zeta"].values[0].to_bits(), 0.1f64.to_bits());
    assert_eq!(back["step"].values, vec![-7.0]);
    assert!(back["step"].all_integers && back["step"].shape.is_empty());
    assert!(back["on"].is_bool);
    assert!(back["big"].all_integers);
    assert!(!back["grid"].all_integers);
    // -0.0 keeps its sign.
    assert!(back["grid"].values[5].is_sign_negative());
}

#[test]
fn parsing_hard_float_text_is_correctly_rounded() {
    for x in HARD_FLOATS {
        let text = format!("{{\"v\": {}}}", serde_json::to_string(&x).unwrap());
        let back = parse_state_json(&text, "s").unwrap();
        assert_eq!(back["v"].values[0].to_bits(), x.to_bits(), "{text}");
        // The same text through Rust's own (correctly rounded) parser.
        let lit = text[6..text.len() - 1].to_string();
        assert_eq!(lit.parse::<f64>().unwrap().to_bits(), x.to_bits(), "{lit}");
    }
    // Decimal strings that need correct rounding on the way in.
    for lit in [
        "2.2250738585072011e-308",
        "9007199254740993",
        "0.1e1",
        "4.9e-324",
    ] {
        let back = parse_state_json(&format!("{{\"v\": {lit}}}"), "s").unwrap();
        assert_eq!(back["v"].values[0], lit.parse::<f64>().unwrap(), "{lit}");
    }
}

#[test]
fn empty_and_zero_size_tensors_in_state() {
    let state = vec![
        (
            "a".to_string(),
            Tensor::from_f64(DType::F32, vec![0], vec![]),
        ),
        (
            "b".to_string(),
            Tensor::from_f64(DType::F32, vec![2, 0], vec![]),
        ),
        ("c".to_string(), Tensor::from_i64(vec![0, 3], vec![])),
    ];
    let json = state_to_json(&state);
    assert_eq!(json, serde_json::json!({"a": [], "b": [[], []], "c": []}));
}

#[test]
fn atomic_write_replaces_content_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.json");
    fs::write(
        &p,
        "old content that is much longer than the new content ....",
    )
    .unwrap();
    write_json_atomic(&p, &serde_json::json!({"step": 1})).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "{\n  \"step\": 1\n}\n");
    write_json_atomic(&p, &serde_json::json!({"step": 2, "t": [1.5]})).unwrap();
    assert_eq!(
        fs::read_to_string(&p).unwrap(),
        "{\n  \"step\": 2,\n  \"t\": [\n    1.5\n  ]\n}\n"
    );
    assert_eq!(files_in(dir.path()), vec!["s.json".to_string()]);

    // A directory in the way is an error, and leaves nothing behind.
    let d = dir.path().join("sub");
    fs::create_dir(&d).unwrap();
    let e = write_json_atomic(&d, &serde_json::json!({})).unwrap_err();
    assert!(matches!(e, DataError::WriteIo { .. }), "{e}");
    assert_eq!(
        files_in(dir.path()),
        vec!["s.json".to_string(), "sub".to_string()]
    );
}

#[cfg(unix)]
#[test]
fn atomic_write_through_a_symlink_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    fs::write(&real, "{}\n").unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    write_json_atomic(&link, &serde_json::json!({"k": 1})).unwrap();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&real).unwrap(), "{\n  \"k\": 1\n}\n");
}

// ---------------------------------------------------------------------------
// params
// ---------------------------------------------------------------------------

#[test]
fn param_assignments() {
    let ok = |s: &str| parse_param_assignment(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(
        ok("gamma=2.0"),
        ("gamma".to_string(), ParamValue::Float(2.0))
    );
    assert_eq!(ok("k=3"), ("k".to_string(), ParamValue::Int(3)));
    assert_eq!(ok("k=-3"), ("k".to_string(), ParamValue::Int(-3)));
    assert_eq!(ok("lr=1e-3"), ("lr".to_string(), ParamValue::Float(1e-3)));
    assert_eq!(ok("lr=1E3"), ("lr".to_string(), ParamValue::Float(1000.0)));
    assert_eq!(ok("m=.5"), ("m".to_string(), ParamValue::Float(0.5)));
    assert_eq!(
        ok("m=inf"),
        ("m".to_string(), ParamValue::Float(f64::INFINITY))
    );
    assert_eq!(
        ok("m=-inf"),
        ("m".to_string(), ParamValue::Float(f64::NEG_INFINITY))
    );
    assert_eq!(
        ok("m=Infinity"),
        ("m".to_string(), ParamValue::Float(f64::INFINITY))
    );
    assert!(matches!(ok("m=nan").1, ParamValue::Float(x) if x.is_nan()));
    assert_eq!(
        ok("use_ls=true"),
        ("use_ls".to_string(), ParamValue::Bool(true))
    );
    assert_eq!(
        ok("use_ls=false"),
        ("use_ls".to_string(), ParamValue::Bool(false))
    );
    assert_eq!(ok(" _a1 = 7 "), ("_a1".to_string(), ParamValue::Int(7)));
    assert_eq!(
        ok("x=0.30000000000000004").1,
        ParamValue::Float(0.30000000000000004)
    );
    assert_eq!(ok("x=5e-324").1, ParamValue::Float(5e-324));

    let e = parse_param_assignment("gamma=abc").unwrap_err();
    assert_eq!(e.to_string(), "param `gamma`: `abc` is not a number");
    assert!(e.help().is_some());
    assert_eq!(code(&e), "L6009");
    for bad in [
        "gamma",
        "=3",
        "1x=3",
        "a-b=3",
        "gamma=",
        "gamma=1.0.0",
        "gamma=0x10",
    ] {
        let e = parse_param_assignment(bad).unwrap_err();
        assert!(matches!(e, DataError::Param { .. }), "{bad}: {e}");
    }
}

#[test]
fn params_json() {
    let p = parse_params_json(
        r#"{"gamma": 2.0, "k": 3, "on": true, "eps": "-inf", "big": 1e300, "n": -4}"#,
        "params.json",
    )
    .unwrap();
    assert_eq!(
        p,
        vec![
            ("gamma".to_string(), ParamValue::Float(2.0)),
            ("k".to_string(), ParamValue::Int(3)),
            ("on".to_string(), ParamValue::Bool(true)),
            ("eps".to_string(), ParamValue::Float(f64::NEG_INFINITY)),
            ("big".to_string(), ParamValue::Float(1e300)),
            ("n".to_string(), ParamValue::Int(-4)),
        ]
    );
    assert_eq!(ParamValue::Bool(true).as_f64(), 1.0);
    assert_eq!(ParamValue::Int(-4).as_f64(), -4.0);

    for (text, want) in [
        (r#"{"gamma": [1, 2]}"#, "param `gamma`"),
        (r#"{"gamma": "two"}"#, "not a number"),
        (r#"{"gamma": null}"#, "null"),
        (r#"{"k": 18446744073709551615}"#, "does not fit"),
        ("[1]", "expected a JSON object"),
        ("{\"a\": }", "line 1, column"),
    ] {
        let e = parse_params_json(text, "params.json").unwrap_err();
        assert!(e.to_string().contains(want), "{text}: {e}");
    }
}

#[test]
fn every_error_has_a_code_and_help() {
    let errs = [
        parse_param_assignment("g=x").unwrap_err(),
        parse_state_json("[]", "s").unwrap_err(),
        parse_state_json(r#"{"t": [[1], []]}"#, "s").unwrap_err(),
        read_npy(Path::new("definitely/not/here.npy"), "x").unwrap_err(),
    ];
    for e in errs {
        let c = code(&e);
        assert!(c.starts_with("L60") && c.len() == 5, "{c}");
        assert!(e.help().is_some(), "{e}");
    }
}

/// f32 state is written in its shortest f32 form and reads back to the same f32 bits.
#[test]
fn f32_state_round_trips_through_its_shortest_form() {
    let vals: Vec<f64> = [
        0.1f32,
        1.0 / 3.0,
        3.4028235e38,
        1e-45,
        -0.0,
        0.5019245,
        16777217.0,
    ]
    .iter()
    .map(|&x| f64::from(x))
    .collect();
    let state = vec![(
        "t".to_string(),
        Tensor::from_f64(DType::F32, vec![vals.len()], vals.clone()),
    )];
    let json = state_to_json(&state);
    let text = serde_json::to_string(&json).unwrap();
    assert!(text.contains("0.1,"), "shortest f32 form: {text}");
    let back = parse_state_json(&text, "s.json").unwrap();
    let got: Vec<u32> = back["t"]
        .values
        .iter()
        .map(|&x| (x as f32).to_bits())
        .collect();
    let want: Vec<u32> = vals.iter().map(|&x| (x as f32).to_bits()).collect();
    assert_eq!(got, want);
}
