//! The driver's own routine declarations, read from its sources with `syn`: the `extern` blocks of
//! `nt/raw.rs` (imports, with their DLL) and the function-pointer types of `nt/raw.rs` and `nt/mod.rs`
//! (callbacks and the routines resolved at run time).

use std::path::Path;

use syn::{FnArg, ForeignItem, Item, ReturnType, Type};

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
        "u8" | "BOOLEAN" => (1, false),
        "i8" => (1, true),
        "u16" => (2, false),
        "i16" => (2, true),
        "u32" => (4, false),
        "i32" | "NTSTATUS" => (4, true),
        "u64" | "usize" => (8, false),
        "i64" | "isize" => (8, true),
        _ => return None,
    })
}

/// Type aliases of the facade that are pointers.
fn pointer_alias(name: &str) -> bool {
    matches!(
        name,
        "HANDLE"
            | "PKSTART_ROUTINE"
            | "PKDEFERRED_ROUTINE"
            | "PIO_WORKITEM_ROUTINE"
            | "PDRIVER_UNLOAD"
            | "PDRIVER_DISPATCH"
            | "ProcessorCallbackFn"
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

/// Every routine imported by `raw.rs`' `extern` blocks, with its DLL.
pub fn imports(raw: &Path) -> Vec<Routine> {
    let mut out = Vec::new();
    for item in parse(raw).items {
        let Item::ForeignMod(block) = item else {
            continue;
        };
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
