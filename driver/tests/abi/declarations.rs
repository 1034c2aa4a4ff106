//! The driver's routine declarations, read with `syn`: the `extern` blocks of `nt/src/sys/raw.rs` (the
//! hand-written imports, with their DLL), the `windows_link::link!("dll" "abi" fn ...)` invocations of
//! windows-sys for the routines `nt/src/sys/raw.rs` re-exports from it, and the function-pointer types of
//! `nt/src/sys/raw.rs`, `nt/src/sys/mod.rs` and windows-sys (callbacks and the routines resolved at run time).

use std::path::{Path, PathBuf};

use syn::parse::{Parse, ParseStream};
use syn::{FnArg, ForeignItem, Item, ReturnType, Type, UseTree};

/// How a parameter or return value is passed on x64: what the ABI check compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abi {
    /// No value (`()` or `!`).
    Void,
    /// A pointer (data or function); `pointee` is the Rust type name when it is a named struct.
    Pointer { pointee: Option<String> },
    /// An integer of `size` bytes.
    Integer { size: usize, signed: bool },
    /// A struct or union passed by value (`LARGE_INTEGER`).
    Record { name: String },
}

impl std::fmt::Display for Abi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abi::Void => f.write_str("void"),
            Abi::Pointer {
                pointee: Some(name),
            } => write!(f, "a pointer to {name}"),
            Abi::Pointer { pointee: None } => f.write_str("a pointer"),
            Abi::Integer { size, signed } => {
                write!(
                    f,
                    "a {size}-byte {} integer",
                    if *signed { "signed" } else { "unsigned" }
                )
            }
            Abi::Record { name } => write!(f, "{name} by value"),
        }
    }
}

/// One declared routine or function-pointer type.
#[derive(Clone, Debug)]
pub struct Routine {
    /// Rust name (the routine, or the type alias).
    pub name: String,
    /// `ntoskrnl.exe` / `hal.dll` for imports, `None` for function-pointer types.
    pub dll: Option<String>,
    /// Parameters (name, ABI).
    pub parameters: Vec<(String, Abi)>,
    /// Return value.
    pub returns: Abi,
    /// C variadic (`...`).
    pub variadic: bool,
}

/// The integer behind a type name, following the facade's aliases.
fn integer(name: &str) -> Option<(usize, bool)> {
    Some(match name {
        "u8" | "bool" => (1, false),
        "i8" => (1, true),
        "u16" => (2, false),
        "i16" => (2, true),
        "u32" | "BUGCHECK_ERROR" | "OBJECT_ATTRIBUTE_FLAGS" => (4, false),
        // windows-sys's aliases of C enums (int under MSVC).
        "i32"
        | "NTSTATUS"
        | "KDPC_IMPORTANCE"
        | "KWAIT_REASON"
        | "TIMER_TYPE"
        | "EVENT_TYPE"
        | "POOL_TYPE"
        | "WORK_QUEUE_TYPE"
        | "KEY_VALUE_INFORMATION_CLASS" => (4, true),
        "u64" | "usize" => (8, false),
        "i64" | "isize" => (8, true),
        _ => return None,
    })
}

/// Type aliases of the facade and windows-sys that are pointers in the headers. windows-sys spells
/// the opaque `PIO_WORKITEM` and `POBJECT_TYPE` as `isize`, which x64 passes like a pointer.
fn pointer_alias(name: &str) -> bool {
    matches!(
        name,
        "HANDLE"
            | "PKSTART_ROUTINE"
            | "PKDEFERRED_ROUTINE"
            | "PIO_WORKITEM_ROUTINE_EX"
            | "DRIVER_UNLOAD"
            | "DRIVER_DISPATCH"
            | "ProcessorCallbackFn"
            | "PIO_WORKITEM"
            | "POBJECT_TYPE"
            | "PSECURITY_DESCRIPTOR"
            | "PSID"
            | "PCSTR"
    )
}

fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// The ABI class of a Rust type written in the facade.
pub fn classify(ty: &Type) -> Abi {
    match ty {
        Type::Never(_) => Abi::Void,
        Type::Tuple(t) if t.elems.is_empty() => Abi::Void,
        Type::Ptr(p) => Abi::Pointer {
            pointee: last_segment(&p.elem).filter(|n| n != "c_void" && n != "u8" && n != "c_char"),
        },
        Type::BareFn(_) => Abi::Pointer { pointee: None },
        Type::Path(_) => {
            let name = last_segment(ty).expect("a path type");
            if let Some((size, signed)) = integer(&name) {
                Abi::Integer { size, signed }
            } else if pointer_alias(&name) || name == "Option" {
                Abi::Pointer { pointee: None }
            } else {
                Abi::Record { name }
            }
        }
        other => panic!("unexpected type in a declaration: {}", quote_type(other)),
    }
}

fn quote_type(ty: &Type) -> String {
    use quote::ToTokens;
    ty.to_token_stream().to_string()
}

fn routine(
    name: String,
    dll: Option<String>,
    inputs: Vec<(String, &Type)>,
    output: &ReturnType,
    variadic: bool,
) -> Routine {
    Routine {
        name,
        dll,
        parameters: inputs.into_iter().map(|(n, t)| (n, classify(t))).collect(),
        returns: match output {
            ReturnType::Default => Abi::Void,
            ReturnType::Type(_, ty) => classify(ty),
        },
        variadic,
    }
}

fn link_name(attributes: &[syn::Attribute]) -> Option<String> {
    attributes
        .iter()
        .find_map(cfg_attr_link_name)
        .or_else(|| plain_link_name(attributes))
}

/// The DLL of `#[cfg_attr(target_os = "windows", link(name = "...", ...))]` (the Windows link of a
/// block the emulated kernel resolves on other hosts).
fn cfg_attr_link_name(attribute: &syn::Attribute) -> Option<String> {
    use quote::ToTokens;
    if !attribute.path().is_ident("cfg_attr") {
        return None;
    }
    let text = attribute.meta.to_token_stream().to_string();
    let rest = &text[text.find("link (")?..];
    let rest = &rest[rest.find("name = \"")? + "name = \"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Whether the block is compiled only on hosts other than Windows (`#[cfg(not(target_os =
/// "windows"))]`: the emulated kernel's variant of a declaration, not an import).
fn host_only(attributes: &[syn::Attribute]) -> bool {
    use quote::ToTokens;
    attributes.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .to_token_stream()
                .to_string()
                .contains("not (target_os = \"windows\")")
    })
}

fn plain_link_name(attributes: &[syn::Attribute]) -> Option<String> {
    attributes
        .iter()
        .filter(|a| a.path().is_ident("link"))
        .find_map(|a| {
            let mut name = None;
            let _ = a.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    name = Some(meta.value()?.parse::<syn::LitStr>()?.value());
                } else {
                    let _ = meta.value()?.parse::<syn::LitStr>()?;
                }
                Ok(())
            });
            name
        })
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every routine imported by `raw.rs`' own `extern` blocks, with its DLL.
pub fn hand_written_imports(raw: &Path) -> Vec<Routine> {
    let mut out = Vec::new();
    for item in parse(raw).items {
        let Item::ForeignMod(block) = item else {
            continue;
        };
        if host_only(&block.attrs) {
            continue;
        }
        let dll = link_name(&block.attrs).expect("an extern block with #[link(name = ...)]");
        for item in block.items {
            let ForeignItem::Fn(f) = item else { continue };
            let inputs = f
                .sig
                .inputs
                .iter()
                .map(|arg| match arg {
                    FnArg::Typed(t) => (quote_pat(&t.pat), &*t.ty),
                    FnArg::Receiver(_) => panic!("a receiver in an extern block"),
                })
                .collect();
            out.push(routine(
                f.sig.ident.to_string(),
                Some(dll.clone()),
                inputs,
                &f.sig.output,
                f.sig.variadic.is_some(),
            ));
        }
    }
    out
}

fn quote_pat(pat: &syn::Pat) -> String {
    match pat {
        syn::Pat::Ident(i) => i.ident.to_string(),
        _ => "_".into(),
    }
}

/// Every `pub type X = [Option<]unsafe extern .. fn(..)[>]` of the given files.
pub fn function_types(files: &[&Path]) -> Vec<Routine> {
    let mut out = Vec::new();
    for file in files {
        for item in parse(file).items {
            let Item::Type(alias) = item else { continue };
            let mut ty = &*alias.ty;
            if let Type::Path(p) = ty {
                let last = p.path.segments.last().expect("a segment");
                if last.ident == "Option" {
                    if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                        if let Some(syn::GenericArgument::Type(inner)) = args.args.first() {
                            ty = inner;
                        }
                    }
                }
            }
            let Type::BareFn(f) = ty else { continue };
            let inputs = f
                .inputs
                .iter()
                .map(|arg| {
                    let name = arg.name.as_ref().map_or("_".into(), |(n, _)| n.to_string());
                    (name, &arg.ty)
                })
                .collect();
            out.push(routine(
                alias.ident.to_string(),
                None,
                inputs,
                &f.output,
                f.variadic.is_some(),
            ));
        }
    }
    out
}

/// Normalised text of a type: paths reduced to their last segment (`super::super::Foundation::KDPC`
/// and `KDPC` are the same type), pointer mutability and `Option<..>` kept.
pub fn type_text(ty: &Type) -> String {
    match ty {
        Type::Ptr(p) => format!(
            "*{} {}",
            if p.mutability.is_some() {
                "mut"
            } else {
                "const"
            },
            type_text(&p.elem)
        ),
        Type::Path(path) => {
            use quote::ToTokens;
            let last = path.path.segments.last().expect("a path type");
            last.to_token_stream().to_string()
        }
        Type::Tuple(t) if t.elems.is_empty() => "()".into(),
        Type::Never(_) => "!".into(),
        other => quote_type(other),
    }
}

/// A routine's signature as text (parameter types and return type, names left out).
pub fn signature_text(inputs: &[&Type], output: &ReturnType, variadic: bool) -> String {
    let mut parameters: Vec<String> = inputs.iter().map(|t| type_text(t)).collect();
    if variadic {
        parameters.push("...".into());
    }
    let returns = match output {
        ReturnType::Default => "()".into(),
        ReturnType::Type(_, ty) => type_text(ty),
    };
    format!("fn({}) -> {returns}", parameters.join(", "))
}

/// Name, calling convention and signature text of every hand-written import of `raw.rs`.
pub fn hand_written_signatures(raw: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for item in parse(raw).items {
        let Item::ForeignMod(block) = item else {
            continue;
        };
        if host_only(&block.attrs) {
            continue;
        }
        let abi = block.abi.name.as_ref().map_or("C".into(), |n| n.value());
        for item in block.items {
            let ForeignItem::Fn(f) = item else { continue };
            let inputs: Vec<&Type> = f
                .sig
                .inputs
                .iter()
                .map(|arg| match arg {
                    FnArg::Typed(t) => &*t.ty,
                    FnArg::Receiver(_) => panic!("a receiver in an extern block"),
                })
                .collect();
            out.push((
                f.sig.ident.to_string(),
                abi.clone(),
                signature_text(&inputs, &f.sig.output, f.sig.variadic.is_some()),
            ));
        }
    }
    out
}

/// One `windows_link::link!("dll" "abi" fn Name(..) -> R)` of windows-sys.
pub struct Linked {
    /// The routine in the form the checks use (its DLL is the macro's).
    pub routine: Routine,
    /// Calling convention literal (`system`, `C`).
    pub abi: String,
    /// [`signature_text`] of it.
    pub signature: String,
}

struct LinkInput {
    dll: syn::LitStr,
    abi: syn::LitStr,
    signature: syn::Signature,
}

impl Parse for LinkInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let dll = input.parse()?;
        let abi = input.parse()?;
        // An optional link-name literal precedes `fn` in the macro's grammar.
        if input.peek(syn::LitStr) {
            let _: syn::LitStr = input.parse()?;
        }
        let signature = input.parse()?;
        Ok(LinkInput {
            dll,
            abi,
            signature,
        })
    }
}

/// Every `windows_link::link!` invocation of a windows-sys module file, by routine name.
pub fn linked(module: &Path) -> Vec<Linked> {
    let mut out = Vec::new();
    for item in parse(module).items {
        let Item::Macro(m) = item else { continue };
        let is_link = m
            .mac
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "link");
        if !is_link {
            continue;
        }
        let input: LinkInput = m
            .mac
            .parse_body()
            .unwrap_or_else(|e| panic!("{}: a link! invocation: {e}", module.display()));
        let sig = &input.signature;
        let typed: Vec<(String, &Type)> = sig
            .inputs
            .iter()
            .map(|arg| match arg {
                FnArg::Typed(t) => (quote_pat(&t.pat), &*t.ty),
                FnArg::Receiver(_) => panic!("a receiver in link!"),
            })
            .collect();
        let types: Vec<&Type> = typed.iter().map(|(_, t)| *t).collect();
        let signature = signature_text(&types, &sig.output, sig.variadic.is_some());
        out.push(Linked {
            routine: routine(
                sig.ident.to_string(),
                Some(input.dll.value()),
                typed,
                &sig.output,
                sig.variadic.is_some(),
            ),
            abi: input.abi.value(),
            signature,
        });
    }
    out
}

/// The names `raw.rs` re-exports from windows-sys, each with the windows-sys module path it names
/// (`["Wdk", "System", "SystemServices"]`).
pub fn windows_sys_reexports(raw: &Path) -> Vec<(String, Vec<String>)> {
    fn walk(tree: &UseTree, path: &mut Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
        match tree {
            UseTree::Path(p) => {
                path.push(p.ident.to_string());
                walk(&p.tree, path, out);
                path.pop();
            }
            UseTree::Name(n) => out.push((n.ident.to_string(), path.clone())),
            UseTree::Rename(r) => out.push((r.rename.to_string(), path.clone())),
            UseTree::Group(g) => g.items.iter().for_each(|t| walk(t, path, out)),
            UseTree::Glob(_) => assert!(
                path.first().map(String::as_str) != Some("windows_sys"),
                "a glob re-export from windows-sys: list the names"
            ),
        }
    }
    let mut out = Vec::new();
    for item in parse(raw).items {
        let Item::Use(u) = item else { continue };
        let mut path = Vec::new();
        let mut found = Vec::new();
        walk(&u.tree, &mut path, &mut found);
        for (name, mut path) in found {
            if path.first().map(String::as_str) == Some("windows_sys") {
                path.remove(0);
                out.push((name, path));
            }
        }
    }
    out
}

/// The file of a windows-sys module (`["Wdk", "System", "SystemServices"]`) under its `src`.
pub fn module_file(windows_sys_src: &Path, module: &[String]) -> PathBuf {
    let mut file = windows_sys_src.join("Windows");
    for segment in module {
        file.push(segment);
    }
    file.join("mod.rs")
}
