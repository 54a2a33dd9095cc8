//! Enums of plain variants that are written and read by one name each: in JSON (serde), in
//! tables and logs (`Display`) and in code (`as_str`). One macro, so that the three can
//! never disagree and a new word costs one line.

/// Declares an enum whose variants each carry the one name they are written and read as:
/// `named_enum! { /// docs  pub enum Outcome { Applied = "applied", Refused = "refused" } }`.
/// More derives and variant attributes (`#[default]`) pass through. The crate's modules
/// declared after this one see it (`#[macro_use]` in `lib.rs`).
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// The name it is written and read as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                // `pad`, so that widths and alignment (`{:<8}`) apply as to a string.
                f.pad(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    named_enum! {
        /// What happened to a thing.
        #[derive(Hash, Default)]
        enum Outcome {
            #[default]
            Applied = "applied",
            Refused = "refused",
        }
    }

    #[test]
    fn one_name_in_json_text_and_code() {
        assert_eq!(Outcome::Refused.as_str(), "refused");
        assert_eq!(format!("[{:<9}]", Outcome::Applied), "[applied  ]");
        assert_eq!(
            serde_json::to_string(&Outcome::Applied).unwrap(),
            "\"applied\""
        );
        let back: Outcome = serde_json::from_str("\"refused\"").unwrap();
        assert_eq!(back, Outcome::Refused);
        assert!(serde_json::from_str::<Outcome>("\"Refused\"").is_err());
        assert_eq!(Outcome::default(), Outcome::Applied);
    }
}
