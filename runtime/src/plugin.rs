//! Loading connector plugins: `cdylib` libraries built with
//! `connector_api::export_plugin!`, found in `--plugin-dir` directories.
//!
//! Each library is checked before anything in it runs beyond the version symbol: the
//! ABI version must match, the vtable symbol must exist, and a connector whose name is
//! already taken (by a built-in or an earlier plugin) is refused. A refused library or
//! connector is reported and the others still load.
//!
//! Every call into a plugin blocks the calling thread (the plugin runs its async code
//! on its own runtime), so the adapters run them inside `block_in_place`. This is the
//! one module of the runtime with `unsafe` code; each block states its invariant.
#![allow(unsafe_code)]

use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::SchemaRef;
use connector_api::abi::{
    self, export_batch, import_batch, status, take_string, BatchMeta, Handle, RawStr, VTable,
    WireDescription, WireSinkState, WireSourceContext,
};
use connector_api::arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use connector_api::{
    blocking, Batch, DynSinkConnector, DynSourceConnector, Error, Offsets, Result, Sink,
    SinkContext, SinkState, Source, SourceContext,
};

/// A loaded library. Dropped (unloaded) only when no connector, source or sink of it
/// is left.
pub struct Library {
    path: PathBuf,
    vtable: *const VTable,
    _lib: libloading::Library,
}

// SAFETY: the vtable is an immutable static inside the library, which stays loaded as
// long as this struct lives; its functions may be called from any thread.
unsafe impl Send for Library {}
// SAFETY: as above; the struct is never mutated after loading.
unsafe impl Sync for Library {}

impl Library {
    fn vt(&self) -> &VTable {
        // SAFETY: the pointer came from the library's vtable symbol and the library is
        // loaded while `self` lives.
        unsafe { &*self.vtable }
    }

    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn status(&self, s: abi::Status) -> Result<()> {
        // SAFETY: statuses come from this library, freed by its own free_string.
        unsafe { status(s, self.vt().free_string) }
    }

    fn string(&self, s: *mut c_char) -> Option<String> {
        // SAFETY: strings come from this library, freed by its own free_string.
        unsafe { take_string(s, self.vt().free_string) }
    }
}

/// Why a library or connector was refused.
#[derive(Debug)]
pub struct Refused {
    /// The library file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin \"{}\" refused: {}",
            self.path.display(),
            self.reason
        )
    }
}

/// A connector a plugin provides.
pub enum Provided {
    /// A source connector.
    Source(Arc<dyn DynSourceConnector>),
    /// A sink connector.
    Sink(Arc<dyn DynSinkConnector>),
}

/// Library files in `dir` (`.so`, `.dylib`, `.dll`), in name order.
pub fn libraries_in(dir: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("plugin directory \"{}\": {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "so" || x == "dylib" || x == "dll")
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Loads one library and lists its connectors.
pub fn load(path: &Path) -> std::result::Result<Vec<Provided>, Refused> {
    let refuse = |reason: String| Refused {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: loading runs the library's initialisers. A plugin directory is trusted
    // code, like the binary itself; this is the one thing the host cannot check first.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| refuse(format!("cannot load: {e}")))?;
    // SAFETY: the symbol, if present, is `extern "C" fn() -> u32` (export_plugin!).
    let version = unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn() -> u32> = lib.get(abi::SYMBOL_ABI_VERSION).map_err(|_| {
            refuse("not a sluice plugin: it has no sluice_plugin_abi_version symbol (build it with connector_api::export_plugin!)".into())
        })?;
        f()
    };
    if version != abi::ABI_VERSION {
        return Err(refuse(format!(
            "it speaks plugin ABI version {version}, this sluice speaks {}; rebuild it against this connector-api",
            abi::ABI_VERSION
        )));
    }
    // SAFETY: with the version checked, the symbol is `extern "C" fn() -> *const VTable`.
    let vtable = unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn() -> *const VTable> = lib
            .get(abi::SYMBOL_VTABLE)
            .map_err(|_| refuse("it has no sluice_plugin_vtable symbol".into()))?;
        f()
    };
    if vtable.is_null() {
        return Err(refuse("its vtable is null".into()));
    }
    let library = Arc::new(Library {
        path: path.to_path_buf(),
        vtable,
        _lib: lib,
    });
    // SAFETY: describe takes no arguments and returns a string of this library.
    let text = library
        .string(unsafe { (library.vt().describe)() })
        .ok_or_else(|| refuse("describe failed (the plugin could not start)".into()))?;
    let description: WireDescription = serde_json::from_str(&text)
        .map_err(|e| refuse(format!("its description is unreadable: {e}")))?;
    Ok(description
        .connectors
        .into_iter()
        .map(|c| {
            let meta = Arc::new(Meta {
                lib: library.clone(),
                name: c.name,
                description: c.description,
                schema: c.config_schema,
            });
            if c.kind == "source" {
                Provided::Source(Arc::new(PluginSource(meta)))
            } else {
                Provided::Sink(Arc::new(PluginSink(meta)))
            }
        })
        .collect())
}

struct Meta {
    lib: Arc<Library>,
    name: String,
    description: String,
    schema: serde_json::Value,
}

impl Meta {
    fn call_config(
        &self,
        f: unsafe extern "C" fn(u32, RawStr, RawStr) -> abi::Status,
        kind: u32,
        config: &serde_json::Value,
    ) -> Result<()> {
        let text = config.to_string();
        // SAFETY: both strings outlive the call.
        let s = unsafe { f(kind, RawStr::of(&self.name), RawStr::of(&text)) };
        self.lib.status(s)
    }

    fn create(
        &self,
        f: unsafe extern "C" fn(RawStr, RawStr, *mut Handle) -> abi::Status,
        config: &serde_json::Value,
    ) -> Result<Handle> {
        let text = config.to_string();
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: strings outlive the call; `handle` is a slot we own.
        let s = unsafe { f(RawStr::of(&self.name), RawStr::of(&text), &mut handle) };
        self.lib.status(s)?;
        if handle.is_null() {
            return Err(Error::internal(format!(
                "plugin connector \"{}\" returned no handle",
                self.name
            )));
        }
        Ok(handle)
    }
}

/// A plugin's source connector.
struct PluginSource(Arc<Meta>);
/// A plugin's sink connector.
struct PluginSink(Arc<Meta>);

#[connector_api::async_trait]
impl DynSourceConnector for PluginSource {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn description(&self) -> &str {
        &self.0.description
    }
    fn config_schema(&self) -> serde_json::Value {
        self.0.schema.clone()
    }
    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        self.0.call_config(self.0.lib.vt().validate, 0, config)
    }
    fn create_source(&self, config: &serde_json::Value) -> Result<Box<dyn Source>> {
        let handle = self.0.create(self.0.lib.vt().source_create, config)?;
        Ok(Box::new(HostSource {
            meta: self.0.clone(),
            handle: SendHandle(handle),
        }))
    }
    async fn check(&self, config: &serde_json::Value) -> Result<()> {
        blocking(|| self.0.call_config(self.0.lib.vt().check, 0, config))
    }
    async fn discover(&self, config: &serde_json::Value) -> Result<Option<SchemaRef>> {
        blocking(|| {
            let text = config.to_string();
            let mut out: *mut c_char = std::ptr::null_mut();
            // SAFETY: strings outlive the call; `out` is a slot we own.
            let s = unsafe {
                (self.0.lib.vt().discover)(RawStr::of(&self.0.name), RawStr::of(&text), &mut out)
            };
            self.0.lib.status(s)?;
            let json = self.0.lib.string(out).unwrap_or_else(|| "null".into());
            let schema: Option<arrow_schema::Schema> = serde_json::from_str(&json)
                .map_err(|e| Error::internal("plugin schema").with_source(e))?;
            Ok(schema.map(Arc::new))
        })
    }
}

#[connector_api::async_trait]
impl DynSinkConnector for PluginSink {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn description(&self) -> &str {
        &self.0.description
    }
    fn config_schema(&self) -> serde_json::Value {
        self.0.schema.clone()
    }
    fn validate(&self, config: &serde_json::Value) -> Result<()> {
        self.0.call_config(self.0.lib.vt().validate, 1, config)
    }
    fn create_sink(&self, config: &serde_json::Value) -> Result<Box<dyn Sink>> {
        let handle = self.0.create(self.0.lib.vt().sink_create, config)?;
        Ok(Box::new(HostSink {
            meta: self.0.clone(),
            handle: SendHandle(handle),
        }))
    }
    async fn check(&self, config: &serde_json::Value) -> Result<()> {
        blocking(|| self.0.call_config(self.0.lib.vt().check, 1, config))
    }
}

/// A plugin handle that may move between threads.
struct SendHandle(Handle);
// SAFETY: a handle is used by one task at a time (`&mut self` on Source/Sink), and the
// plugin's instances are `Send` (the traits require it).
unsafe impl Send for SendHandle {}

struct HostSource {
    meta: Arc<Meta>,
    handle: SendHandle,
}

#[connector_api::async_trait]
impl Source for HostSource {
    async fn open(&mut self, ctx: &SourceContext, committed: &Offsets) -> Result<()> {
        let ctx = serde_json::to_string(&WireSourceContext {
            pipeline: ctx.pipeline.clone(),
            batch_size: ctx.batch_size,
            idle_timeout_ms: ctx.idle_timeout.as_millis() as u64,
            splits: ctx.splits.clone(),
            columns: ctx.columns.clone(),
        })
        .map_err(|e| Error::internal("source context").with_source(e))?;
        let offsets = committed.to_envelope();
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        // SAFETY: live handle; strings outlive the call.
        blocking(|| {
            self.meta
                .lib
                .status(unsafe { (vt.source_open)(h, RawStr::of(&ctx), RawStr::of(&offsets)) })
        })
    }

    async fn next_batch(&mut self) -> Result<Option<Batch>> {
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        blocking(|| {
            let mut array = FFI_ArrowArray::empty();
            let mut schema = FFI_ArrowSchema::empty();
            let mut meta: *mut c_char = std::ptr::null_mut();
            let mut done = false;
            // SAFETY: live handle; every out pointer is a slot we own, initialised empty.
            let s = unsafe { (vt.source_next)(h, &mut array, &mut schema, &mut meta, &mut done) };
            self.meta.lib.status(s)?;
            if done {
                return Ok(None);
            }
            let meta = self.meta.lib.string(meta).ok_or_else(|| {
                Error::internal("plugin source returned a batch without metadata")
            })?;
            let meta: BatchMeta = serde_json::from_str(&meta)
                .map_err(|e| Error::internal("plugin batch metadata").with_source(e))?;
            let records = if meta.has_data {
                // SAFETY: the plugin filled the pair with an exported struct array.
                unsafe { import_batch(array, &schema)? }
            } else {
                Batch::idle().records
            };
            let mut batch = Batch::new(records, Offsets::from_envelope(&meta.offsets)?);
            batch.rejects = abi::rejects_from_wire(meta.rejects);
            Ok(Some(batch))
        })
        .map_err(|e: Error| e.context(format!("plugin \"{}\"", self.meta.lib.path().display())))
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<()> {
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        let text = offsets.to_envelope();
        // SAFETY: live handle; the string outlives the call.
        blocking(|| {
            self.meta
                .lib
                .status(unsafe { (vt.source_commit)(h, RawStr::of(&text)) })
        })
    }

    async fn close(&mut self) -> Result<()> {
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        // SAFETY: live handle.
        blocking(|| self.meta.lib.status(unsafe { (vt.source_close)(h) }))
    }
}

impl Drop for HostSource {
    fn drop(&mut self) {
        // SAFETY: the handle came from source_create and is freed once, here.
        unsafe { (self.meta.lib.vt().source_free)(self.handle.0) }
    }
}

struct HostSink {
    meta: Arc<Meta>,
    handle: SendHandle,
}

#[connector_api::async_trait]
impl Sink for HostSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<SinkState> {
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        let ctx = serde_json::json!({"pipeline": ctx.pipeline, "sink": ctx.sink}).to_string();
        blocking(|| {
            let mut out: *mut c_char = std::ptr::null_mut();
            // SAFETY: live handle; the string outlives the call; `out` is our slot.
            let s = unsafe { (vt.sink_open)(h, RawStr::of(&ctx), &mut out) };
            self.meta.lib.status(s)?;
            let text = self.meta.lib.string(out).unwrap_or_else(|| "{}".into());
            let wire: WireSinkState = serde_json::from_str(&text)
                .map_err(|e| Error::internal("plugin sink state").with_source(e))?;
            Ok(SinkState {
                offsets: wire
                    .offsets
                    .map(|o| Offsets::from_envelope(&o))
                    .transpose()?,
                schema: wire.schema.map(Arc::new),
            })
        })
    }

    async fn write(&mut self, batch: &Batch) -> Result<()> {
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        let (mut array, schema) = export_batch(&batch.records)?;
        let meta = serde_json::to_string(&BatchMeta {
            offsets: batch.offsets.to_envelope(),
            rejects: Vec::new(),
            has_data: true,
        })
        .map_err(|e| Error::internal("batch meta").with_source(e))?;
        // SAFETY: live handle; the plugin takes the array out of our slot (leaving it
        // released), borrows the schema and the string for the call.
        blocking(|| {
            self.meta
                .lib
                .status(unsafe { (vt.sink_write)(h, &mut array, &schema, RawStr::of(&meta)) })
        })
        .map_err(|e| e.context(format!("plugin \"{}\"", self.meta.lib.path().display())))
    }

    async fn flush(&mut self, offsets: &Offsets) -> Result<()> {
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        let text = offsets.to_envelope();
        // SAFETY: live handle; the string outlives the call.
        blocking(|| {
            self.meta
                .lib
                .status(unsafe { (vt.sink_flush)(h, RawStr::of(&text)) })
        })
    }

    async fn close(&mut self) -> Result<()> {
        let (vt, h) = (self.meta.lib.vt(), self.handle.0);
        // SAFETY: live handle.
        blocking(|| self.meta.lib.status(unsafe { (vt.sink_close)(h) }))
    }
}

impl Drop for HostSink {
    fn drop(&mut self) {
        // SAFETY: the handle came from sink_create and is freed once, here.
        unsafe { (self.meta.lib.vt().sink_free)(self.handle.0) }
    }
}
