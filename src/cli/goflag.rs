//! The model of Go's `flag` package that every flag table is written in.
//!
//! A Go flag is a name, a usage text and a `flag.Value`: something that
//! parses its text (`Set`) and prints itself (`String`). Its Go type decides
//! the rest: whether it takes a value only after `=` (booleans), what usage
//! calls the value, and which default usage leaves out (the type's zero).
//! [`FlagValue`] is that contract for a Rust type, and [`flag_set!`] turns
//! one list of entries (name, field, type, default, usage) into a struct of
//! fields and its table of [`FlagDef`]s, so a flag is written in one place.
//! What must stay true: a type's `KIND` and `ZERO` are what Go's own type for
//! that flag reports, since usage text and parsing rules depend on them.

use super::strconv::{parse_bool, parse_uint};

/// How Go's `flag` package treats a flag's value: whether it needs one, and
/// what usage calls its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Takes a value only as `-name=value`; `-name` alone means true.
    Bool,
    /// Usage names it `string` and quotes its default.
    String,
    /// Usage names it `uint`.
    Uint,
    /// Any other `flag.Value` (klog's levels, our enums); usage says `value`.
    Other,
}

impl Kind {
    /// The value's name in usage when the help text back-quotes none.
    pub fn usage_name(self) -> &'static str {
        match self {
            Kind::Bool => "",
            Kind::String => "string",
            Kind::Uint => "uint",
            Kind::Other => "value",
        }
    }
}

/// Go's `flag.Value` for a Rust type.
pub trait FlagValue: Sized {
    const KIND: Kind;
    /// What the Go type prints for its zero value; usage shows a default
    /// only when it differs from this.
    const ZERO: &'static str;
    /// Go's `Value.Set`. The error text is what Go prints after
    /// `invalid value "x" for flag -name: `.
    fn parse(text: &str) -> Result<Self, String>;
    /// Go's `Value.String`: the value as Go logs it.
    fn text(&self) -> String;

    /// What giving the flag does to its value: Go's `flag.Value.Set`.
    /// Most flags replace it; a repeatable one adds to it.
    fn set(&mut self, text: &str) -> Result<(), String> {
        *self = Self::parse(text)?;
        Ok(())
    }
}

impl FlagValue for bool {
    const KIND: Kind = Kind::Bool;
    const ZERO: &'static str = "false";

    fn parse(text: &str) -> Result<Self, String> {
        parse_bool(text).ok_or_else(|| "parse error".to_owned())
    }

    fn text(&self) -> String {
        if *self { "true" } else { "false" }.to_owned()
    }
}

impl FlagValue for String {
    const KIND: Kind = Kind::String;
    const ZERO: &'static str = "";

    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }

    fn text(&self) -> String {
        self.clone()
    }
}

/// Go's `uint64` flag: base 0 (`0x10`, `0o7`, `1_000`), strconv detail
/// hidden behind the `flag` package's two sentinel messages.
impl FlagValue for u64 {
    const KIND: Kind = Kind::Uint;
    const ZERO: &'static str = "0";

    fn parse(text: &str) -> Result<Self, String> {
        parse_uint(text, 0, 64).map_err(|e| e.flag_text().to_owned())
    }

    fn text(&self) -> String {
        self.to_string()
    }
}

/// What Go's `flag` package knows of a flag apart from its storage.
/// A flag that may be given more than once, each time adding a value. Its
/// default stands until the first time it is given, which replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Repeated {
    pub values: Vec<String>,
    /// Whether the flag was given (the values are no longer the default).
    pub given: bool,
}

impl From<&str> for Repeated {
    fn from(default: &str) -> Self {
        Repeated {
            values: if default.is_empty() {
                Vec::new()
            } else {
                vec![default.to_owned()]
            },
            given: false,
        }
    }
}

impl FlagValue for Repeated {
    const KIND: Kind = Kind::String;
    const ZERO: &'static str = "";

    fn parse(text: &str) -> Result<Self, String> {
        Ok(Repeated {
            values: vec![text.to_owned()],
            given: true,
        })
    }

    /// As Go prints a repeatable value: the values, comma-separated.
    fn text(&self) -> String {
        self.values.join(",")
    }

    fn set(&mut self, text: &str) -> Result<(), String> {
        if !self.given {
            self.values.clear();
            self.given = true;
        }
        self.values.push(text.to_owned());
        Ok(())
    }
}

#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    /// As in Go, the first back-quoted word names the value in usage.
    pub help: &'static str,
    pub kind: Kind,
    pub zero: &'static str,
}

/// One flag of a table whose values live in a struct `S`.
pub struct FlagDef<S: 'static> {
    pub spec: Spec,
    /// Parse the text into the flag's field of `S`.
    pub set: fn(&mut S, &str) -> Result<(), String>,
    /// Print the flag's field of `S` as Go would.
    pub text: fn(&S) -> String,
}

/// Define a struct of flag values and the table of its flags, one entry per
/// flag: `"name" => field: Type = default, "usage";` (doc comments on an
/// entry document the field). `Default` holds every default, converted with
/// `Into` (a `String` field takes a `&str`); the table's setters and printers
/// go through the field type's [`FlagValue`].
macro_rules! flag_set {
    (
        $(#[$struct_meta:meta])*
        $vis:vis struct $args:ident;
        $(#[$table_meta:meta])*
        $table_vis:vis const $table:ident;
        $(
            $(#[$field_meta:meta])*
            $name:literal => $field:ident: $ty:ty = $default:expr, $help:expr;
        )*
    ) => {
        $(#[$struct_meta])*
        #[derive(Debug, Clone)]
        $vis struct $args {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        /// Every flag at its default.
        impl Default for $args {
            fn default() -> Self {
                $args { $( $field: $default.into(), )* }
            }
        }

        $(#[$table_meta])*
        $table_vis const $table: &[$crate::cli::goflag::FlagDef<$args>] = &[$(
            $crate::cli::goflag::FlagDef {
                spec: $crate::cli::goflag::Spec {
                    name: $name,
                    help: $help,
                    kind: <$ty as $crate::cli::goflag::FlagValue>::KIND,
                    zero: <$ty as $crate::cli::goflag::FlagValue>::ZERO,
                },
                set: |args, text| {
                    <$ty as $crate::cli::goflag::FlagValue>::set(&mut args.$field, text)
                },
                text: |args| $crate::cli::goflag::FlagValue::text(&args.$field),
            },
        )*];
    };
}

pub(super) use flag_set;
