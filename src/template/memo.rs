//! The load memo: a loaded [`Project`]'s layers saved beside the identity
//! of every file and directory they were read from, so that loading an
//! unchanged repository is a few thousand `stat` calls instead of parsing
//! every template and hashing every script (cargo's fingerprints, git's
//! index, Bazel's digest cache work the same way).
//!
//! An input's identity is its device, inode, size, mode, mtime and ctime.
//! Any write changes mtime and ctime, replacing a file changes its inode,
//! and adding, removing or renaming an entry changes its directory's
//! mtime, so a memo whose inputs all match describes the files as they are
//! now. `ctime` cannot be set from user space, so `touch -d` or an mtime
//! restored by a tool still invalidates.
//!
//! One hazard remains: a file written twice within one timestamp tick,
//! the first time just before amimake read it. As git does with "racily
//! clean" entries, a memo is not saved while any input was modified less
//! than [`RACY_MARGIN`] (2 s on filesystems with whole-second timestamps)
//! before loading began; the next load saves it (`build` and `plan` load
//! once more when they end, see `Project::save_memo_later`). `AMIMAKE_LOAD_MEMO=off`
//! turns the memo off, e.g. on a network filesystem whose clock is skewed.
//!
//! The memo lives at `<cache dir>/memo/<blake3 of the project root>`: a
//! header (format, the amimake executable's identity), the inputs, then the
//! layers, in MessagePack. Anything unreadable, from another
//! amimake binary, or stale is ignored and replaced: the memo is only ever
//! a shortcut to what loading would compute.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::template::resolve::Layer;

/// Bump when the memo's layout or the meaning of a loaded [`Layer`] changes
/// within one amimake version.
const MEMO_FORMAT: u32 = 2;

/// Inputs modified this close to the start of loading keep a memo from
/// being saved (timestamps come from a coarse clock).
pub const RACY_MARGIN: Duration = Duration::from_millis(100);
/// The margin on filesystems whose timestamps have whole seconds.
const COARSE_RACY_MARGIN: Duration = Duration::from_secs(2);

/// What identifies one version of a file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Fingerprint {
    #[cfg(unix)]
    fn from_stat(st: &rustix::fs::Stat) -> Fingerprint {
        // Field widths differ between platforms; all fit these types.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Fingerprint {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mode: st.st_mode as u32,
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
        }
    }

    /// `follow`: through symlinks (`stat`) or of the link itself (`lstat`).
    #[cfg(unix)]
    fn of(path: &Path, follow: bool) -> Option<Fingerprint> {
        let st = if follow {
            rustix::fs::stat(path)
        } else {
            rustix::fs::lstat(path)
        };
        st.ok().map(|st| Fingerprint::from_stat(&st))
    }

    #[cfg(not(unix))]
    fn of(_: &Path, _: bool) -> Option<Fingerprint> {
        None
    }

    fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }

    /// When a load starting then may trust this version.
    fn settled_at(&self) -> i64 {
        let whole_seconds =
            self.mtime_ns % 1_000_000_000 == 0 || self.ctime_ns % 1_000_000_000 == 0;
        let margin = if whole_seconds {
            COARSE_RACY_MARGIN
        } else {
            RACY_MARGIN
        };
        self.mtime_ns.max(self.ctime_ns) + margin.as_nanos() as i64
    }

    /// Modified too recently (relative to `start_ns`) to be trusted.
    fn racy(&self, start_ns: i64) -> bool {
        self.settled_at() > start_ns
    }
}

/// A file or directory read while loading, by name within its directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    name: String,
    /// `stat` (true) or `lstat` (entries inside a directory input, where
    /// links are content).
    follow: bool,
    print: Fingerprint,
}

/// The inputs in one directory: checked with one open directory and a
/// `stat` relative to it per entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DirInputs {
    dir: PathBuf,
    entries: Vec<Entry>,
}

impl DirInputs {
    #[cfg(unix)]
    fn unchanged(&self) -> bool {
        use rustix::fs::{AtFlags, Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(dir) = rustix::fs::open(&self.dir, flags, Mode::empty()) else {
            return false;
        };
        self.entries.iter().all(|e| {
            let at = if e.follow {
                AtFlags::empty()
            } else {
                AtFlags::SYMLINK_NOFOLLOW
            };
            rustix::fs::statat(&dir, e.name.as_str(), at)
                .is_ok_and(|st| Fingerprint::from_stat(&st) == e.print)
        })
    }

    #[cfg(not(unix))]
    fn unchanged(&self) -> bool {
        false
    }
}

/// Why a memo was not saved.
#[derive(Debug, PartialEq, Eq)]
enum Skip {
    /// An input was written moments before loading began; the newest
    /// input's time, in nanoseconds since the epoch.
    Racy(i64),
    /// An input vanished, or its name is not UTF-8.
    Unusable,
}

/// What must match before anything else is read.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    version: String,
    /// The running executable: another build of amimake may load differently.
    exe: Option<Fingerprint>,
    root: PathBuf,
}

/// Where a project's memo lives, and when loading began.
pub struct Memo {
    file: PathBuf,
    root: PathBuf,
    /// Nanoseconds since the epoch when loading began.
    start_ns: i64,
}

/// Whether the memo is turned off by `AMIMAKE_LOAD_MEMO=off` (or `0`).
pub fn disabled() -> bool {
    std::env::var("AMIMAKE_LOAD_MEMO").is_ok_and(|v| matches!(v.trim(), "off" | "0" | "false"))
}

impl Memo {
    /// The memo of the project at (canonical) `root`, kept under `dir`,
    /// for a load that began at `start_ns` (before anything was read).
    pub fn new(dir: &Path, root: &Path, start_ns: i64) -> Memo {
        let key = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
        Memo {
            file: dir.join(&key[..32]),
            root: root.to_path_buf(),
            start_ns,
        }
    }

    /// The saved layers, if every input is exactly as it was when saved.
    pub fn load(&self) -> Option<Vec<Layer>> {
        let bytes = std::fs::read(&self.file).ok()?;
        let (header, rest) = section(&bytes)?;
        let (inputs, layers) = section(rest)?;
        let header: Header = rmp_serde::from_slice(header).ok()?;
        if header.format != MEMO_FORMAT
            || header.version != env!("CARGO_PKG_VERSION")
            || header.root != self.root
            || header.exe.is_none()
            || header.exe != exe_fingerprint()
        {
            return None;
        }
        // Inputs are decoded and checked on a second thread while this one
        // decodes the layers (into its allocator arena, where the project
        // then lives).
        let (unchanged, decoded) = std::thread::scope(|s| {
            let checking = s.spawn(|| {
                rmp_serde::from_slice::<Vec<DirInputs>>(inputs)
                    .is_ok_and(|inputs| inputs.iter().all(DirInputs::unchanged))
            });
            let decoded = decode_layers(layers);
            (checking.join().unwrap_or(false), decoded)
        });
        match decoded {
            Ok(layers) if unchanged => Some(layers),
            Err(e) => {
                tracing::debug!("ignoring unreadable load memo {}: {e}", self.file.display());
                None
            }
            Ok(_) => None,
        }
    }

    /// Saves `layers`, loaded from `reads` (files and directories, followed
    /// through links). Directory inputs are fingerprinted with everything
    /// inside them. Not saved (and any old memo removed) while an input is
    /// racy, which returns when they will have settled (nanoseconds since
    /// the epoch); other failures only cost the next load its shortcut.
    pub fn save(&self, reads: &[PathBuf], layers: &[Layer]) -> Result<(), i64> {
        let inputs = match self.fingerprint(reads) {
            Ok(inputs) => inputs,
            Err(why) => {
                tracing::debug!("load memo not saved: {why:?}");
                let _ = std::fs::remove_file(&self.file);
                return match why {
                    Skip::Racy(newest) => Err(newest),
                    Skip::Unusable => Ok(()),
                };
            }
        };
        let header = Header {
            format: MEMO_FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            exe: exe_fingerprint(),
            root: self.root.clone(),
        };
        if let Err(e) = self.write(&header, &inputs, layers) {
            tracing::debug!("load memo not saved to {}: {e}", self.file.display());
        }
        Ok(())
    }

    /// Fingerprints of `reads` (and what is inside directories among
    /// them), grouped by directory.
    fn fingerprint(&self, reads: &[PathBuf]) -> Result<Vec<DirInputs>, Skip> {
        let mut found: Vec<(PathBuf, bool)> = Vec::with_capacity(reads.len());
        for path in reads {
            found.push((path.clone(), true));
            if Fingerprint::of(path, true).ok_or(Skip::Unusable)?.is_dir() {
                for entry in walkdir::WalkDir::new(path).min_depth(1) {
                    found.push((entry.map_err(|_| Skip::Unusable)?.into_path(), false));
                }
            }
        }
        // By directory, so each directory is one group.
        found.sort_by(|a, b| (a.0.parent(), &a.0).cmp(&(b.0.parent(), &b.0)));
        found.dedup_by(|a, b| a.0 == b.0);
        let mut inputs: Vec<DirInputs> = Vec::new();
        let mut racy = None;
        for (path, follow) in found {
            let print = Fingerprint::of(&path, follow).ok_or(Skip::Unusable)?;
            if print.racy(self.start_ns) {
                racy = racy.max(Some(print.settled_at()));
            }
            let dir = path.parent().ok_or(Skip::Unusable)?.to_path_buf();
            let name = path.file_name().and_then(|n| n.to_str());
            let entry = Entry {
                name: name.ok_or(Skip::Unusable)?.to_string(),
                follow,
                print,
            };
            match inputs.last_mut() {
                Some(last) if last.dir == dir => last.entries.push(entry),
                _ => inputs.push(DirInputs {
                    dir,
                    entries: vec![entry],
                }),
            }
        }
        match racy {
            Some(newest) => Err(Skip::Racy(newest)),
            None => Ok(inputs),
        }
    }

    /// `[length: u64 LE][header][length][inputs][layers]`, each compact
    /// MessagePack (arrays, not maps; see [`self_describing`] for the
    /// parts that are not).
    fn write(
        &self,
        header: &Header,
        inputs: &[DirInputs],
        layers: &[Layer],
    ) -> std::io::Result<()> {
        use std::io::Write;
        let encode = |e: rmp_serde::encode::Error| std::io::Error::other(e);
        let header = rmp_serde::to_vec(header).map_err(encode)?;
        let inputs = rmp_serde::to_vec(inputs).map_err(encode)?;
        let layers = rmp_serde::to_vec(layers).map_err(encode)?;
        let dir = self.file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        for part in [&header, &inputs] {
            tmp.write_all(&(part.len() as u64).to_le_bytes())?;
            tmp.write_all(part)?;
        }
        tmp.write_all(&layers)?;
        tmp.persist(&self.file).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A length-prefixed section of a memo file, and the rest.
fn section(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<8>()?;
    rest.split_at_checked(usize::try_from(u64::from_le_bytes(*len)).ok()?)
}

/// A serde `with` module for layer fields whose types skip empty fields
/// when serialized (for `show`): such a value cannot sit in a compact
/// stream, where fields are known by position, so it is kept there as a
/// nested MessagePack blob with named fields.
pub mod self_describing {
    use serde::de::{DeserializeOwned, Error as _, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let bytes = rmp_serde::to_vec_named(value).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        struct Blob<T>(std::marker::PhantomData<T>);
        impl<T: DeserializeOwned> Visitor<'_> for Blob<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a MessagePack blob")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<T, E> {
                rmp_serde::from_slice(bytes).map_err(E::custom)
            }
        }
        d.deserialize_bytes(Blob(std::marker::PhantomData))
            .map_err(|e| D::Error::custom(format!("nested value: {e}")))
    }
}

/// The layers, into a vector of exactly their number (serde's own `Vec`
/// grows by doubling from a cautious guess: up to twice the memory).
fn decode_layers(bytes: &[u8]) -> Result<Vec<Layer>, rmp_serde::decode::Error> {
    struct Exact;
    impl<'de> serde::de::Visitor<'de> for Exact {
        type Value = Vec<Layer>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence of layers")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Layer>, A::Error> {
            let mut layers = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 24));
            while let Some(layer) = seq.next_element()? {
                layers.push(layer);
            }
            Ok(layers)
        }
    }
    serde::Deserializer::deserialize_seq(&mut rmp_serde::Deserializer::from_read_ref(bytes), Exact)
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn exe_fingerprint() -> Option<Fingerprint> {
    Fingerprint::of(&std::env::current_exe().ok()?, true)
}
