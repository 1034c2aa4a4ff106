//! Every routine the driver imports or resolves, and every callback type it implements, against the
//! header prototype: a C++ file whose templates take each header function type apart and
//! `static_assert` arity, variadic-ness and, per parameter and return value, the x64 class (pointer,
//! integer, record), size, signedness (plain integers; C enums are `int` under MSVC) and pointee size.

use core::mem::size_of;
use std::fmt::Write;

use kepoch_nt::sys as nt;

use super::declarations::{Abi, Routine};

/// The C++ helpers the generated assertions use.
const PRELUDE: &str = r#"
#include <cstddef>
#include <tuple>
#include <type_traits>
namespace abi {
template <class F> struct sig;
template <class R, class... A> struct sig<R(A...)> {
    using ret = R; using args = std::tuple<A...>; static constexpr bool variadic = false; };
template <class R, class... A> struct sig<R(A..., ...)> {
    using ret = R; using args = std::tuple<A...>; static constexpr bool variadic = true; };
template <class F, std::size_t I> using arg = std::tuple_element_t<I, typename sig<F>::args>;
template <class F> constexpr std::size_t arity = std::tuple_size_v<typename sig<F>::args>;
enum Kind { Void, Pointer, Integer, Record, Other };
template <class T> constexpr Kind kind() {
    if constexpr (std::is_void_v<T>) return Void;
    else if constexpr (std::is_pointer_v<T>) return Pointer;
    else if constexpr (std::is_integral_v<T> || std::is_enum_v<T>) return Integer;
    else if constexpr (std::is_class_v<T> || std::is_union_v<T>) return Record;
    else return Other;
}
template <class T> constexpr std::size_t size() { if constexpr (std::is_void_v<T>) return 0; else return sizeof(T); }
template <class T> constexpr bool sign_matches(bool rust_signed) {
    if constexpr (std::is_integral_v<T>) return std::is_signed_v<T> == rust_signed; else return true; }
template <class T, class = void> struct complete : std::false_type {};
template <class T> struct complete<T, decltype(void(sizeof(T)))> : std::true_type {};
template <class T> constexpr bool pointee_is(std::size_t bytes, std::size_t rounding) {
    using P = std::remove_cv_t<std::remove_pointer_t<T>>;
    if constexpr (std::is_void_v<P> || std::is_function_v<P> || !complete<P>::value) return true;
    else return (sizeof(P) + rounding - 1) / rounding * rounding == bytes;
}
}
"#;

/// Bytes of a struct the facade points to (pointee checks).
fn pointee_size(name: &str) -> Option<usize> {
    Some(match name {
        "KDPC" => size_of::<nt::KDPC>(),
        "KTIMER" => size_of::<nt::KTIMER>(),
        "KEVENT" => size_of::<nt::KEVENT>(),
        "UNICODE_STRING" => size_of::<nt::UNICODE_STRING>(),
        "PROCESSOR_NUMBER" => size_of::<nt::PROCESSOR_NUMBER>(),
        "DRIVER_OBJECT" => size_of::<nt::DRIVER_OBJECT>(),
        "DEVICE_OBJECT" => size_of::<nt::DEVICE_OBJECT>(),
        "IRP" => size_of::<nt::IRP>(),
        "OBJECT_ATTRIBUTES" => size_of::<nt::OBJECT_ATTRIBUTES>(),
        "SECURITY_DESCRIPTOR" => size_of::<nt::SECURITY_DESCRIPTOR>(),
        "ACL" => size_of::<nt::ACL>(),
        "ACCESS_STATE" => size_of::<windows_sys::Wdk::Foundation::ACCESS_STATE>(),
        "CLIENT_ID" => size_of::<nt::CLIENT_ID>(),
        // `*const i64` is windows-sys's PLARGE_INTEGER.
        "i64" => 8,
        "KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT" => size_of::<nt::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT>(),
        "HANDLE" | "usize" => 8,
        "u32" | "NTSTATUS" | "i32" => 4,
        _ => return None,
    })
}

/// Size of a record passed by value (none now: windows-sys passes `LARGE_INTEGER` as `i64`).
fn record_size(name: &str) -> usize {
    panic!("no size known for {name} passed by value: add it to record_size")
}

/// The header's function type for a Rust function-pointer alias, or why it has none.
pub fn header_type_of_alias(name: &str) -> Result<&'static str, &'static str> {
    match name {
        "KSTART_ROUTINE" => Ok("std::remove_pointer_t<PKSTART_ROUTINE>"),
        "KDEFERRED_ROUTINE" => Ok("std::remove_pointer_t<PKDEFERRED_ROUTINE>"),
        "IO_WORKITEM_ROUTINE_EX" => Ok("std::remove_pointer_t<PIO_WORKITEM_ROUTINE_EX>"),
        // windows-sys's names of the pointer types.
        "DRIVER_UNLOAD" => Ok("std::remove_pointer_t<PDRIVER_UNLOAD>"),
        "DRIVER_DISPATCH" => Ok("std::remove_pointer_t<PDRIVER_DISPATCH>"),
        // Pinned instead (`windows_sys_callbacks_are_still_parameterless`).
        "PKSTART_ROUTINE" | "PKDEFERRED_ROUTINE" | "PIO_WORKITEM_ROUTINE_EX" => Err(
            "windows-sys's type has no parameters (the metadata lost them); the driver's callbacks \
             have the *_ROUTINE types of nt/src/sys/raw.rs, checked instead",
        ),
        "Erased" => Err("nt/src/sys/raw.rs' private name of windows-sys's parameterless callback pointer"),
        "ProcessorCallbackFn" => Ok("PROCESSOR_CALLBACK_FUNCTION"),
        "KeRegisterProcessorChangeCallbackFn" => Ok("decltype(KeRegisterProcessorChangeCallback)"),
        "KeDeregisterProcessorChangeCallbackFn" => Ok("decltype(KeDeregisterProcessorChangeCallback)"),
        "KeGetProcessorNumberFromIndexFn" => Ok("decltype(KeGetProcessorNumberFromIndex)"),
        // Pinned instead (layouts::PINNED): not in mingw-w64's headers.
        "ExAllocatePool2Fn" => Err("ExAllocatePool2 is not declared by mingw-w64 (Windows 10 2004 DDI)"),
        other => panic!("no header counterpart known for the function type {other}: add it to header_type_of_alias"),
    }
}

fn check(out: &mut String, what: &str, condition: String) {
    writeln!(out, "static_assert({condition}, \"{what}\");").unwrap();
}

fn abi_checks(out: &mut String, label: &str, ty: &str, position: &str, abi: &Abi) {
    let (kind, size, signed) = match abi {
        Abi::Void => ("Void", 0, false),
        Abi::Pointer { .. } => ("Pointer", 8, false),
        Abi::Integer { size, signed } => ("Integer", *size, *signed),
        Abi::Record { name } => ("Record", record_size(name), false),
    };
    let what = format!("{label}: {position} is {abi} on the Rust side");
    // windows-sys passes and returns LARGE_INTEGER (an 8-byte union) as i64: x64 passes and returns
    // both in the same integer register.
    let large_integer = if matches!(
        abi,
        Abi::Integer {
            size: 8,
            signed: true
        }
    ) {
        format!(" || std::is_same_v<std::remove_cv_t<{ty}>, LARGE_INTEGER>")
    } else {
        String::new()
    };
    check(
        out,
        &what,
        format!("(abi::kind<{ty}>() == abi::{kind} && abi::size<{ty}>() == {size}){large_integer}"),
    );
    if let Abi::Integer { signed: _, .. } = abi {
        check(
            out,
            &format!("{what} (signedness)"),
            format!("abi::sign_matches<{ty}>({signed})"),
        );
    }
    if let Abi::Pointer {
        pointee: Some(name),
    } = abi
    {
        let bytes = pointee_size(name)
            .unwrap_or_else(|| panic!("{label}: add the size of {name} to pointee_size"));
        if bytes > 0 {
            let rounding = super::layouts::pointee_rounding(name);
            let bytes = bytes.div_ceil(rounding) * rounding;
            check(
                out,
                &format!("{what} (pointee of {bytes} bytes)"),
                format!("abi::pointee_is<{ty}>({bytes}, {rounding})"),
            );
        }
    }
}

/// The assertions for one routine, whose header function type is `header`.
pub fn routine_checks(out: &mut String, routine: &Routine, header: &str) {
    let label = &routine.name;
    writeln!(out, "namespace check_{label} {{ using F = {header};").unwrap();
    let arity = routine.parameters.len();
    check(
        out,
        &format!("{label}: {arity} parameter(s) on the Rust side"),
        format!("abi::arity<F> == {arity}"),
    );
    check(
        out,
        &format!("{label}: variadic = {} on the Rust side", routine.variadic),
        format!("abi::sig<F>::variadic == {}", routine.variadic),
    );
    abi_checks(
        out,
        label,
        "typename abi::sig<F>::ret",
        "the return value",
        &routine.returns,
    );
    for (index, (name, abi)) in routine.parameters.iter().enumerate() {
        let ty = format!("abi::arg<F, {}>", index.min(arity.saturating_sub(1)));
        abi_checks(
            out,
            label,
            &ty,
            &format!("parameter {} `{name}`", index + 1),
            abi,
        );
    }
    writeln!(out, "}}").unwrap();
}

/// The whole C++ file: the prelude after `includes`, then one namespace per routine.
pub fn file(includes: &str, routines: &[(Routine, String)]) -> String {
    let mut out = String::from(includes);
    out.push_str(PRELUDE);
    for (routine, header) in routines {
        routine_checks(&mut out, routine, header);
    }
    out
}
