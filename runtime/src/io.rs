//! Tensor files: NumPy `.npy` and `.npz`, read and written without trusting them.
//!
//! The `.npy` reader is written here rather than delegated to `npyz`, because a data
//! file is hostile input: its header is parsed by a small bounded parser, the size it
//! claims (`numel * itemsize`, with checked arithmetic) is compared with the bytes the
//! file really holds *before* anything is allocated, and every allocation is fallible.
//! No input, however malformed, makes these functions panic. `npyz` supplies the
//! `.npz` container (its zip archive); each member is read by the same `.npy` reader.
//!
//! Accepted dtypes: `f4`→F32, `f8`→F64, `f2`→F32 (widened); `i1 i2 i4 i8 u1 u2 u4`→I64
//! (widened), `u8`→I64 when every value fits; `b1`→Bool. Little-, big-endian and
//! native byte orders; C and Fortran order (Fortran data is transposed to C order).
//!
//! Writers produce version 1.0 `.npy` files in C order. Files are written atomically:
//! to a temporary file in the target's directory, synced, then renamed over the target.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use losslang_compiler::value::{DType, Data, Tensor};
use miette::Diagnostic;
use thiserror::Error;

/// An error in a data file (inputs, params, state) or while writing one.
#[derive(Debug, Error, Diagnostic)]
pub enum DataError {
    #[error("cannot read `{}`: {source}", path.display())]
    #[diagnostic(
        code(L6001),
        help("check that the file exists, is readable and is not a directory")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("input `{input}`: `{}` is not a .npy file (bad magic)", path.display())]
    #[diagnostic(
        code(L6002),
        help(
            "a .npy file starts with the bytes \\x93NUMPY; write it with numpy.save(path, array)"
        )
    )]
    NotNpy { input: String, path: PathBuf },

    #[error(
        "input `{input}`: header claims shape {} ({}) but the file holds {actual_bytes} bytes of data",
        fmt_shape(shape), human_bytes(*claimed_bytes)
    )]
    #[diagnostic(
        code(L6003),
        help("the file is truncated or its header is corrupt; write it again with numpy.save")
    )]
    Truncated {
        input: String,
        shape: Vec<u64>,
        claimed_bytes: u64,
        actual_bytes: u64,
    },

    #[error("input `{input}`: unsupported dtype `{descr}`{}", dtype_hint(descr))]
    #[diagnostic(
        code(L6004),
        help(
            "supported dtypes are float32/float64/float16, int8..int64, uint8..uint64 and bool; \
             convert with array.astype(numpy.float32) (or int64, bool) before saving"
        )
    )]
    UnsupportedDType { input: String, descr: String },

    #[error("input `{input}`: bad .npy header: {msg}")]
    #[diagnostic(
        code(L6005),
        help("the .npy header is malformed; write the file again with numpy.save")
    )]
    BadHeader { input: String, msg: String },

    #[error("`{}`: {msg}", path.display())]
    #[diagnostic(
        code(L6006),
        help("a .npz file is a zip archive of .npy files, as written by numpy.savez")
    )]
    Npz { path: PathBuf, msg: String },

    #[error("`{path}`: {msg}")]
    #[diagnostic(
        code(L6007),
        help(
            "the file must be a JSON object such as {{\"gamma\": 2.0, \"table\": [1.0, 2.0]}}; \
             NaN and infinities are written as the strings \"nan\", \"inf\", \"-inf\""
        )
    )]
    Json { path: String, msg: String },

    #[error("state `{key}`: {msg}")]
    #[diagnostic(
        code(L6008),
        help(
            "a state value is a number, true/false, or a rectangular nested list of them; \
             NaN and infinities are written as the strings \"nan\", \"inf\", \"-inf\""
        )
    )]
    StateKey { key: String, msg: String },

    #[error("param `{name}`: {msg}")]
    #[diagnostic(
        code(L6009),
        help(
            "a param value is an integer (3), a float (0.5, 1e-3, inf, nan) or true/false, \
             given as `--param NAME=VALUE` or in a JSON object {{\"NAME\": VALUE}}"
        )
    )]
    Param { name: String, msg: String },

    #[error("cannot write `{}`: {source}", path.display())]
    #[diagnostic(
        code(L6010),
        help("check that the directory exists and is writable, and that the disk is not full")
    )]
    WriteIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "input `{input}`: header claims shape {} ({}) but the file holds {actual_bytes} bytes of data \
         ({} bytes too many)",
        fmt_shape(shape), human_bytes(*claimed_bytes), actual_bytes.saturating_sub(*claimed_bytes)
    )]
    #[diagnostic(
        code(L6011),
        help("the header does not match the data; write the file again with numpy.save")
    )]
    TrailingData {
        input: String,
        shape: Vec<u64>,
        claimed_bytes: u64,
        actual_bytes: u64,
    },

    #[error("input `{input}`: {msg}")]
    #[diagnostic(
        code(L6012),
        help("convert the array to a supported dtype whose range holds its values (e.g. int64)")
    )]
    BadData { input: String, msg: String },

    #[error("input `{input}`: cannot allocate {} for its data", human_bytes(*bytes))]
    #[diagnostic(
        code(L6013),
        help("the array does not fit in this machine's memory; use smaller inputs")
    )]
    Alloc { input: String, bytes: u64 },

    #[error("cannot write `{}`: {msg}", path.display())]
    #[diagnostic(
        code(L6014),
        help("this is an internal inconsistency of the tensor being written; please report it")
    )]
    BadTensor { path: PathBuf, msg: String },
}

/// `[2, 3]`
pub(crate) fn fmt_shape(shape: &[u64]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A byte count for people: `400 bytes`, `1.5 kB`, `4.0 TB` (decimal units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return if n == 1 {
            "1 byte".to_string()
        } else {
            format!("{n} bytes")
        };
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn dtype_hint(descr: &str) -> &'static str {
    let body = descr.trim_start_matches(['<', '>', '|', '=']);
    match body.chars().next() {
        Some('S') | Some('a') => " (byte strings)",
        Some('U') => " (unicode strings)",
        Some('O') => " (Python objects)",
        Some('c') => " (complex numbers)",
        Some('V') | Some('[') | Some('(') => " (structured or void records)",
        Some('M') => " (datetimes)",
        Some('m') => " (timedeltas)",
        Some('f') => " (this float width is not supported)",
        Some('i') | Some('u') => " (this integer width is not supported)",
        _ => "",
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Headers longer than this are refused (numpy itself refuses more than 10 000 bytes).
const MAX_HEADER_LEN: usize = 1 << 20;
/// Bytes decoded per chunk while reading data.
const CHUNK_BYTES: usize = 1 << 16;

/// Read one `.npy` file as the input named `input` (the name is used in errors).
pub fn read_npy(path: &Path, input: &str) -> Result<Tensor, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(io_err(io::Error::other("it is a directory")));
    }
    // A regular file's length is known; a pipe or device is read as a stream.
    let total_len = meta.is_file().then_some(meta.len());
    let mut reader = BufReader::with_capacity(CHUNK_BYTES, file);
    read_npy_stream(&mut reader, total_len, input, path)
}

/// Read every array of a `.npz` archive, in archive order, named without the `.npy`
/// suffix. Members whose name does not end in `.npy` are skipped, as numpy does.
/// Errors about a member name it as `ARCHIVE:NAME`.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(DataError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("it is a directory"),
        });
    }
    // The zip reader is third-party code running on hostile input: a panic inside it
    // is turned into an error rather than a crash.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_npz_inner(path, BufReader::new(file))
    }));
    match result {
        Ok(r) => r,
        Err(_) => Err(DataError::Npz {
            path: path.to_path_buf(),
            msg: "the zip archive is malformed".to_string(),
        }),
    }
}

fn read_npz_inner(path: &Path, file: BufReader<File>) -> Result<Vec<(String, Tensor)>, DataError> {
    let npz_err = |msg: String| DataError::Npz {
        path: path.to_path_buf(),
        msg,
    };
    let mut archive = npyz::npz::NpzArchive::new(file)
        .map_err(|e| npz_err(format!("not a valid .npz (zip) archive: {e}")))?;
    let zip = archive.zip_archive();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for index in 0..zip.len() {
        let mut member = zip
            .by_index(index)
            .map_err(|e| npz_err(format!("cannot open member #{index}: {e}")))?;
        if member.is_dir() {
            continue;
        }
        let file_name = member.name().to_string();
        let Some(name) = npyz::npz::array_name_from_file_name(&file_name) else {
            continue;
        };
        let name = name.to_string();
        if out.iter().any(|(n, _)| *n == name) {
            return Err(npz_err(format!(
                "the archive holds two arrays named `{name}`"
            )));
        }
        let label = format!("{}:{}", path.display(), name);
        let declared = member.size();
        let tensor = read_npy_stream(&mut member, Some(declared), &label, path)?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Element encodings accepted on read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F16,
    F32,
    F64,
    /// Signed integer of the given byte width.
    Int(usize),
    /// Unsigned integer of the given byte width.
    UInt(usize),
    Bool,
}

impl Elem {
    fn itemsize(self) -> usize {
        match self {
            Elem::F16 => 2,
            Elem::F32 => 4,
            Elem::F64 => 8,
            Elem::Int(n) | Elem::UInt(n) => n,
            Elem::Bool => 1,
        }
    }

    fn dtype(self) -> DType {
        match self {
            Elem::F16 | Elem::F32 => DType::F32,
            Elem::F64 => DType::F64,
            Elem::Int(_) | Elem::UInt(_) => DType::I64,
            Elem::Bool => DType::Bool,
        }
    }
}

#[derive(Debug)]
struct Header {
    elem: Elem,
    big_endian: bool,
    fortran: bool,
    shape: Vec<u64>,
}

/// Read as many bytes as `buf` holds, stopping early only at end of stream.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Read a `.npy` stream. `total_len` is the length of the whole stream when known
/// (a regular file, a zip member); it is checked against the header's claim before
/// any allocation.
fn read_npy_stream<R: Read + ?Sized>(
    r: &mut R,
    total_len: Option<u64>,
    input: &str,
    path: &Path,
) -> Result<Tensor, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |msg: String| DataError::BadHeader {
        input: input.to_string(),
        msg,
    };

    // Magic and version.
    let mut pre = [0u8; 8];
    let got = read_full(r, &mut pre).map_err(io_err)?;
    if got < MAGIC.len() || &pre[..6] != MAGIC {
        return Err(DataError::NotNpy {
            input: input.to_string(),
            path: path.to_path_buf(),
        });
    }
    if got < 8 {
        return Err(bad(
            "the file ends inside the header (no version bytes)".into()
        ));
    }
    let len_bytes = match (pre[6], pre[7]) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        (major, minor) => {
            return Err(bad(format!(
                "unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are read)"
            )));
        }
    };
    let mut lenbuf = [0u8; 4];
    let got = read_full(r, &mut lenbuf[..len_bytes]).map_err(io_err)?;
    if got < len_bytes {
        return Err(bad(
            "the file ends inside the header (no header length)".into()
        ));
    }
    let header_len = if len_bytes == 2 {
        u64::from(u16::from_le_bytes([lenbuf[0], lenbuf[1]]))
    } else {
        u64::from(u32::from_le_bytes(lenbuf))
    };
    let prefix_len = 8 + len_bytes as u64;
    if let Some(total) = total_len
        && prefix_len + header_len > total
    {
        return Err(bad(format!(
            "the header claims {header_len} bytes but the file is only {total} bytes long"
        )));
    }
    if header_len > MAX_HEADER_LEN as u64 {
        return Err(bad(format!(
            "the header claims {header_len} bytes (at most {MAX_HEADER_LEN} are accepted)"
        )));
    }
    let mut hbuf = vec![0u8; header_len as usize];
    let got = read_full(r, &mut hbuf).map_err(io_err)?;
    if got < hbuf.len() {
        return Err(bad(format!(
            "the file ends inside the header ({got} of {header_len} header bytes)"
        )));
    }
    let text = if pre[6] == 3 {
        String::from_utf8(hbuf).map_err(|_| bad("the header is not valid UTF-8".into()))?
    } else {
        // Versions 1 and 2 are latin-1.
        hbuf.iter().map(|&b| char::from(b)).collect()
    };
    let header = parse_header(&text, input)?;

    // Size check, before allocating anything.
    let itemsize = header.elem.itemsize() as u64;
    let numel = header
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(format!(
                "shape {} has more elements than can be addressed",
                fmt_shape(&header.shape)
            ))
        })?;
    let claimed = numel.checked_mul(itemsize).ok_or_else(|| {
        bad(format!(
            "shape {} with {itemsize}-byte elements needs more bytes than can be addressed",
            fmt_shape(&header.shape)
        ))
    })?;
    let data_start = prefix_len + header_len;
    if let Some(total) = total_len {
        let actual = total - data_start;
        if actual < claimed {
            return Err(DataError::Truncated {
                input: input.to_string(),
                shape: header.shape.clone(),
                claimed_bytes: claimed,
                actual_bytes: actual,
            });
        }
        if actual > claimed {
            return Err(DataError::TrailingData {
                input: input.to_string(),
                shape: header.shape.clone(),
                claimed_bytes: claimed,
                actual_bytes: actual,
            });
        }
    }
    let numel_usize = usize::try_from(numel).map_err(|_| DataError::Alloc {
        input: input.to_string(),
        bytes: claimed,
    })?;
    let shape: Vec<usize> = header
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| DataError::Alloc {
            input: input.to_string(),
            bytes: claimed,
        })?;

    let mut decoder = Decoder::new(header.elem, header.big_endian);
    // When the stream length is known and matched the claim, the whole result is
    // reserved at once (fallibly); otherwise the vector grows with the data read.
    if total_len.is_some() {
        decoder.reserve(numel_usize, input)?;
    }
    let chunk_elems = (CHUNK_BYTES / itemsize as usize).max(1);
    let mut buf = vec![0u8; chunk_elems * itemsize as usize];
    let mut remaining = numel_usize;
    let mut read_bytes: u64 = 0;
    while remaining > 0 {
        let n = remaining.min(chunk_elems);
        let want = n * itemsize as usize;
        let got = read_full(r, &mut buf[..want]).map_err(io_err)?;
        read_bytes += got as u64;
        if got < want {
            return Err(DataError::Truncated {
                input: input.to_string(),
                shape: header.shape.clone(),
                claimed_bytes: claimed,
                actual_bytes: read_bytes,
            });
        }
        if total_len.is_none() {
            decoder.reserve(n, input)?;
        }
        decoder.push(&buf[..want], input)?;
        remaining -= n;
    }
    if total_len.is_none() {
        // A stream of unknown length must end exactly where the header says.
        let mut extra = [0u8; 1];
        if read_full(r, &mut extra).map_err(io_err)? > 0 {
            let mut rest = 1u64;
            let mut sink = [0u8; 4096];
            // Count a bounded amount of the excess for the message.
            while rest < (1 << 20) {
                let k = read_full(r, &mut sink).map_err(io_err)?;
                if k == 0 {
                    break;
                }
                rest += k as u64;
            }
            return Err(DataError::TrailingData {
                input: input.to_string(),
                shape: header.shape.clone(),
                claimed_bytes: claimed,
                actual_bytes: claimed + rest,
            });
        }
    }

    let data = decoder.finish();
    let data = if header.fortran && shape.len() > 1 {
        match data {
            Data::F(v) => Data::F(fortran_to_c(&v, &shape, input)?),
            Data::I(v) => Data::I(fortran_to_c(&v, &shape, input)?),
            Data::B(v) => Data::B(fortran_to_c(&v, &shape, input)?),
        }
    } else {
        data
    };
    Ok(Tensor {
        dtype: header.elem.dtype(),
        shape,
        data,
    })
}

/// Decodes raw element bytes into the tensor's storage.
struct Decoder {
    elem: Elem,
    big_endian: bool,
    data: Data,
    /// Elements decoded so far (for error messages).
    count: usize,
}

impl Decoder {
    fn new(elem: Elem, big_endian: bool) -> Decoder {
        let data = match elem.dtype() {
            DType::F32 | DType::F64 => Data::F(Vec::new()),
            DType::I64 => Data::I(Vec::new()),
            DType::Bool => Data::B(Vec::new()),
        };
        Decoder {
            elem,
            big_endian,
            data,
            count: 0,
        }
    }

    fn reserve(&mut self, additional: usize, input: &str) -> Result<(), DataError> {
        let (ok, elem_size) = match &mut self.data {
            Data::F(v) => (v.try_reserve(additional).is_ok(), 8u64),
            Data::I(v) => (v.try_reserve(additional).is_ok(), 8),
            Data::B(v) => (v.try_reserve(additional).is_ok(), 1),
        };
        if ok {
            Ok(())
        } else {
            Err(DataError::Alloc {
                input: input.to_string(),
                bytes: (additional as u64).saturating_mul(elem_size),
            })
        }
    }

    fn push(&mut self, bytes: &[u8], input: &str) -> Result<(), DataError> {
        let be = self.big_endian;
        let size = self.elem.itemsize();
        macro_rules! word {
            ($c:expr, $n:literal) => {{
                let mut a = [0u8; $n];
                a.copy_from_slice($c);
                if be {
                    a.reverse()
                }
                a
            }};
        }
        match (&mut self.data, self.elem) {
            (Data::F(v), Elem::F16) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| f16_to_f64(u16::from_le_bytes(word!(c, 2)))),
            ),
            (Data::F(v), Elem::F32) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| f64::from(f32::from_le_bytes(word!(c, 4)))),
            ),
            (Data::F(v), Elem::F64) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| f64::from_le_bytes(word!(c, 8))),
            ),
            (Data::I(v), Elem::Int(1)) => v.extend(bytes.iter().map(|&b| i64::from(b as i8))),
            (Data::I(v), Elem::Int(2)) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| i64::from(i16::from_le_bytes(word!(c, 2)))),
            ),
            (Data::I(v), Elem::Int(4)) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| i64::from(i32::from_le_bytes(word!(c, 4)))),
            ),
            (Data::I(v), Elem::Int(8)) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| i64::from_le_bytes(word!(c, 8))),
            ),
            (Data::I(v), Elem::UInt(1)) => v.extend(bytes.iter().map(|&b| i64::from(b))),
            (Data::I(v), Elem::UInt(2)) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| i64::from(u16::from_le_bytes(word!(c, 2)))),
            ),
            (Data::I(v), Elem::UInt(4)) => v.extend(
                bytes
                    .chunks_exact(size)
                    .map(|c| i64::from(u32::from_le_bytes(word!(c, 4)))),
            ),
            (Data::I(v), Elem::UInt(8)) => {
                for (k, c) in bytes.chunks_exact(size).enumerate() {
                    let x = u64::from_le_bytes(word!(c, 8));
                    let Ok(x) = i64::try_from(x) else {
                        return Err(DataError::BadData {
                            input: input.to_string(),
                            msg: format!(
                                "element {} is {x}, which does not fit in i64 (uint64 data)",
                                self.count + k
                            ),
                        });
                    };
                    v.push(x);
                }
            }
            (Data::B(v), Elem::Bool) => v.extend(bytes.iter().map(|&b| b != 0)),
            // `Decoder::new` pairs each element kind with its storage.
            _ => {
                return Err(DataError::BadHeader {
                    input: input.to_string(),
                    msg: "internal: element kind and storage disagree".to_string(),
                });
            }
        }
        self.count += bytes.len() / size;
        Ok(())
    }

    fn finish(self) -> Data {
        self.data
    }
}

/// IEEE half precision to f64 (exact).
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f64::from(h & 0x3ff);
    match exp {
        0 => sign * man * 2f64.powi(-24),
        31 if man == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + man / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Reorder data stored in Fortran order (first axis fastest) into C order.
fn fortran_to_c<T: Copy>(v: &[T], shape: &[usize], input: &str) -> Result<Vec<T>, DataError> {
    let n = v.len();
    let mut out: Vec<T> = Vec::new();
    if out.try_reserve_exact(n).is_err() {
        return Err(DataError::Alloc {
            input: input.to_string(),
            bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        });
    }
    if n == 0 {
        return Ok(out);
    }
    // Fortran strides: axis 0 has stride 1.
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    for _ in 0..n {
        out.push(v[off]);
        // Odometer over the C-order multi-index, last axis fastest.
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            off += fstride[k];
            if idx[k] < shape[k] {
                break;
            }
            off -= fstride[k] * idx[k];
            idx[k] = 0;
        }
    }
    Ok(out)
}

// --- the header: a Python dict literal ------------------------------------------

/// The subset of Python literals that appears in `.npy` headers.
#[derive(Debug)]
enum Py {
    Str(String),
    /// An integer; `None` when it does not fit in u64 (or is negative: see `neg`).
    Int {
        neg: bool,
        mag: Option<u64>,
    },
    Bool(bool),
    NoneLit,
    Seq(Vec<Py>),
    Dict(Vec<(Py, Py, (usize, usize))>),
}

struct PyParser<'a> {
    s: &'a str,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 32;

impl<'a> PyParser<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes().get(self.pos) {
            if b == b' ' || b == b'\t' || b == b'\n' || b == b'\r' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn err(&self, what: &str) -> String {
        let near: String = self
            .s
            .get(self.pos..)
            .unwrap_or("")
            .chars()
            .take(20)
            .collect();
        format!(
            "{what} at byte {} of the header dict (near `{}`)",
            self.pos,
            near.trim_end()
        )
    }

    fn value(&mut self) -> Result<Py, String> {
        self.skip_ws();
        let Some(b) = self.peek() else {
            return Err(self.err("unexpected end"));
        };
        match b {
            b'{' => self.nested(|p| p.dict()),
            b'(' => self.nested(|p| p.seq(b')')),
            b'[' => self.nested(|p| p.seq(b']')),
            b'\'' | b'"' => self.string(),
            b'u' | b'b' | b'U' | b'B'
                if matches!(self.bytes().get(self.pos + 1), Some(b'\'') | Some(b'"')) =>
            {
                self.pos += 1;
                self.string()
            }
            b'-' | b'+' | b'0'..=b'9' => self.int(),
            _ => {
                let rest = &self.s[self.pos..];
                for (word, v) in [
                    ("True", Py::Bool(true)),
                    ("False", Py::Bool(false)),
                    ("None", Py::NoneLit),
                ] {
                    if rest.starts_with(word)
                        && !rest[word.len()..]
                            .bytes()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                    {
                        self.pos += word.len();
                        return Ok(v);
                    }
                }
                Err(self.err("unexpected text"))
            }
        }
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<Py, String>) -> Result<Py, String> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err("literal nested too deeply"));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn seq(&mut self, close: u8) -> Result<Py, String> {
        self.pos += 1; // opening bracket
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(Py::Seq(items));
            }
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(self.err("expected `,` or a closing bracket")),
            }
        }
    }

    fn dict(&mut self) -> Result<Py, String> {
        self.pos += 1; // `{`
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Py::Dict(items));
            }
            let key = self.value()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected `:`"));
            }
            self.pos += 1;
            self.skip_ws();
            let start = self.pos;
            let value = self.value()?;
            let end = self.pos;
            items.push((key, value, (start, end)));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    fn string(&mut self) -> Result<Py, String> {
        let quote = self.bytes()[self.pos];
        self.pos += 1;
        let mut out = String::new();
        let mut seg_start = self.pos;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            if b == quote {
                out.push_str(&self.s[seg_start..self.pos]);
                self.pos += 1;
                return Ok(Py::Str(out));
            }
            if b == b'\\' {
                out.push_str(&self.s[seg_start..self.pos]);
                let Some(e) = self.bytes().get(self.pos + 1).copied() else {
                    return Err(self.err("unterminated string"));
                };
                match e {
                    b'n' => out.push('\n'),
                    b't' => out.push('\t'),
                    b'r' => out.push('\r'),
                    b'0' => out.push('\0'),
                    b'\\' | b'\'' | b'"' => out.push(char::from(e)),
                    _ if e.is_ascii() => {
                        out.push('\\');
                        out.push(char::from(e));
                    }
                    // A backslash before a multi-byte character: keep both as they are.
                    _ => {
                        out.push('\\');
                        self.pos += 1;
                        seg_start = self.pos;
                        continue;
                    }
                }
                self.pos += 2;
                seg_start = self.pos;
                continue;
            }
            self.pos += 1;
        }
    }

    fn int(&mut self) -> Result<Py, String> {
        let mut neg = false;
        match self.peek() {
            Some(b'-') => {
                neg = true;
                self.pos += 1;
            }
            Some(b'+') => self.pos += 1,
            _ => {}
        }
        let start = self.pos;
        let mut mag: Option<u64> = Some(0);
        while let Some(d @ b'0'..=b'9') = self.peek() {
            mag = mag
                .and_then(|m| m.checked_mul(10))
                .and_then(|m| m.checked_add(u64::from(d - b'0')));
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("expected a number"));
        }
        // Python 2 long literals: `3L`.
        if matches!(self.peek(), Some(b'L') | Some(b'l')) {
            self.pos += 1;
        }
        if matches!(
            self.peek(),
            Some(b'.') | Some(b'e') | Some(b'E') | Some(b'j')
        ) {
            return Err(self.err("expected an integer"));
        }
        Ok(Py::Int { neg, mag })
    }
}

fn parse_header(text: &str, input: &str) -> Result<Header, DataError> {
    let bad = |msg: String| DataError::BadHeader {
        input: input.to_string(),
        msg,
    };
    let mut p = PyParser {
        s: text,
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return Err(bad(p.err("expected a dict literal `{...}`")));
    }
    let dict = p.value().map_err(bad)?;
    p.skip_ws();
    // numpy pads with spaces and ends with a newline; some writers pad with NULs.
    if p.s.as_bytes()[p.pos..].iter().any(|&b| b != 0) {
        return Err(bad(p.err("unexpected text after the header dict")));
    }
    let Py::Dict(items) = dict else {
        return Err(bad("expected a dict literal".into()));
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v, span) in &items {
        let Py::Str(k) = k else {
            return Err(bad("a header key is not a string".into()));
        };
        match k.as_str() {
            "descr" => descr = Some((v, *span)),
            "fortran_order" => fortran = Some(v),
            "shape" => shape = Some(v),
            _ => {} // unknown keys are ignored
        }
    }
    let Some((descr, span)) = descr else {
        return Err(bad("the header has no 'descr' key".into()));
    };
    let Some(fortran) = fortran else {
        return Err(bad("the header has no 'fortran_order' key".into()));
    };
    let Some(shape) = shape else {
        return Err(bad("the header has no 'shape' key".into()));
    };
    let fortran = match fortran {
        Py::Bool(b) => *b,
        Py::Int {
            neg: false,
            mag: Some(m @ (0 | 1)),
        } => *m == 1,
        _ => return Err(bad("'fortran_order' is not True or False".into())),
    };
    let Py::Seq(dims) = shape else {
        return Err(bad("'shape' is not a tuple".into()));
    };
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        match d {
            Py::Int {
                neg: false,
                mag: Some(m),
            } => shape.push(*m),
            Py::Int { neg: true, .. } => {
                return Err(bad("'shape' has a negative dimension".into()));
            }
            Py::Int { mag: None, .. } => {
                return Err(bad("'shape' has a dimension too large to address".into()));
            }
            _ => return Err(bad("'shape' holds something other than integers".into())),
        }
    }
    let (elem, big_endian) = match descr {
        Py::Str(s) => parse_descr(s).ok_or_else(|| DataError::UnsupportedDType {
            input: input.to_string(),
            descr: s.clone(),
        })?,
        _ => {
            let raw: String = text[span.0..span.1].chars().take(200).collect();
            return Err(DataError::UnsupportedDType {
                input: input.to_string(),
                descr: raw,
            });
        }
    };
    Ok(Header {
        elem,
        big_endian,
        fortran,
        shape,
    })
}

/// `<f4` → (F32, little endian). `None` for anything unsupported.
fn parse_descr(s: &str) -> Option<(Elem, bool)> {
    let native_big = cfg!(target_endian = "big");
    let (big, body) = match s.as_bytes().first()? {
        b'<' => (false, &s[1..]),
        b'>' => (true, &s[1..]),
        b'|' | b'=' => (native_big, &s[1..]),
        _ => (native_big, s),
    };
    let elem = match body {
        "f2" | "e" => Elem::F16,
        "f4" | "f" => Elem::F32,
        "f8" | "d" => Elem::F64,
        "i1" | "b" => Elem::Int(1),
        "i2" | "h" => Elem::Int(2),
        "i4" => Elem::Int(4),
        "i8" | "q" => Elem::Int(8),
        "u1" | "B" => Elem::UInt(1),
        "u2" | "H" => Elem::UInt(2),
        "u4" => Elem::UInt(4),
        "u8" | "Q" => Elem::UInt(8),
        "b1" | "?" => Elem::Bool,
        _ => return None,
    };
    Some((elem, big))
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Write `t` as a float32 `.npy` (C order, the tensor's shape), whatever its dtype.
pub fn write_npy_f32(path: &Path, t: &Tensor) -> Result<(), DataError> {
    check_tensor(path, t)?;
    let vals = t.to_f64_vec();
    write_npy_raw(path, "<f4", &t.shape, |w| {
        write_chunked(w, &vals, 4, |x, out| {
            out.copy_from_slice(&(*x as f32).to_le_bytes())
        })
    })
}

/// Write `t` in its own dtype: f32 → `<f4`, f64 → `<f8`, i64 → `<i8`, bool → `|b1`.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), DataError> {
    check_tensor(path, t)?;
    let mismatch = || DataError::BadTensor {
        path: path.to_path_buf(),
        msg: format!("a {} tensor holds data of another kind", t.dtype),
    };
    match t.dtype {
        DType::F32 => write_npy_f32(path, t),
        DType::F64 => {
            let vals = t.to_f64_vec();
            write_npy_raw(path, "<f8", &t.shape, |w| {
                write_chunked(w, &vals, 8, |x, out| out.copy_from_slice(&x.to_le_bytes()))
            })
        }
        DType::I64 => {
            let Data::I(vals) = &t.data else {
                return Err(mismatch());
            };
            write_npy_raw(path, "<i8", &t.shape, |w| {
                write_chunked(w, vals, 8, |x, out| out.copy_from_slice(&x.to_le_bytes()))
            })
        }
        DType::Bool => {
            let Data::B(vals) = &t.data else {
                return Err(mismatch());
            };
            write_npy_raw(path, "|b1", &t.shape, |w| {
                write_chunked(w, vals, 1, |x, out| out[0] = u8::from(*x))
            })
        }
    }
}

fn check_tensor(path: &Path, t: &Tensor) -> Result<(), DataError> {
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let len = match &t.data {
        Data::F(v) => v.len(),
        Data::I(v) => v.len(),
        Data::B(v) => v.len(),
    };
    if numel != Some(len) {
        return Err(DataError::BadTensor {
            path: path.to_path_buf(),
            msg: format!(
                "the tensor's shape {} does not match its {len} elements",
                fmt_shape(&t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
            ),
        });
    }
    Ok(())
}

fn write_chunked<T>(
    w: &mut dyn Write,
    vals: &[T],
    size: usize,
    enc: impl Fn(&T, &mut [u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; 4096 * size];
    for chunk in vals.chunks(4096) {
        for (x, out) in chunk.iter().zip(buf.chunks_exact_mut(size)) {
            enc(x, out);
        }
        w.write_all(&buf[..chunk.len() * size])?;
    }
    Ok(())
}

/// The `.npy` preamble and header for `descr` and a C-order `shape`.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad with spaces and a final newline so that the data starts 64-byte aligned.
    let pad_to = |prefix: usize| {
        let unpadded = prefix + dict.len() + 1;
        let total = unpadded.div_ceil(64) * 64;
        total - prefix
    };
    let (version, prefix) = if pad_to(10) <= usize::from(u16::MAX) {
        (1u8, 10usize)
    } else {
        (2u8, 12usize)
    };
    let hlen = pad_to(prefix);
    let mut out = Vec::with_capacity(prefix + hlen);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + hlen - 1, b' ');
    out.push(b'\n');
    out
}

fn write_npy_raw(
    path: &Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), DataError> {
    let header = npy_header(descr, shape);
    write_file_atomic(path, |w| {
        w.write_all(&header)?;
        body(w)
    })
}

/// Write a file atomically: the bytes go to a temporary file in the target's
/// directory, which is synced and then renamed over the target, so that a process
/// killed mid-write leaves the old file (or none) in place, never a torn one. The
/// directory is synced afterwards (best effort).
///
/// A target that is a symbolic link is followed (the link stays a link); a target that
/// exists and is not a regular file (`/dev/stdout`, a pipe) is written in place.
pub fn write_file_atomic(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), DataError> {
    let werr = |source| DataError::WriteIo {
        path: path.to_path_buf(),
        source,
    };
    let mut target = path.to_path_buf();
    if let Ok(meta) = fs::metadata(path) {
        if meta.is_dir() {
            return Err(werr(io::Error::other("it is a directory")));
        }
        if !meta.is_file() {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(werr)?;
            let mut w = BufWriter::new(&mut f);
            body(&mut w).map_err(werr)?;
            w.flush().map_err(werr)?;
            return Ok(());
        }
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            target = fs::canonicalize(path).map_err(werr)?;
        }
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lossc-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(werr)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        body(&mut w).map_err(werr)?;
        w.flush().map_err(werr)?;
    }
    // Keep the permissions of the file being replaced; a new file gets the usual 0644
    // rather than the temporary file's 0600.
    match fs::metadata(&target) {
        Ok(meta) => {
            let _ = tmp.as_file().set_permissions(meta.permissions());
        }
        Err(_) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = tmp
                    .as_file()
                    .set_permissions(fs::Permissions::from_mode(0o644));
            }
        }
    }
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(&target).map_err(|e| werr(e.error))?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
