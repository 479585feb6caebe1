//! The templates under `provisioning/templates/`, compiled into the binary (a daemon must not depend
//! on its source tree at run time), rendered by minijinja with strict undefined variables.
//!
//! `*.xml.j2` templates escape every interpolated value for XML (`& < > " '`); minijinja's own
//! HTML mode would also turn every `/` of a path into `&#x2f;`, valid but unreadable in a domain XML.
//! The NoCloud templates are YAML: their values are validated to a safe character set before
//! rendering instead (see `seed`).

use minijinja::{AutoEscape, Environment, Error, Output, State, UndefinedBehavior, Value};

use crate::error::ProvisionError;

pub const DOMAIN_XML: &str = "domain.xml.j2";
pub const META_DATA: &str = "meta-data.yaml.j2";
pub const USER_DATA: &str = "user-data.yaml.j2";

const SOURCES: [(&str, &str); 3] = [
    (DOMAIN_XML, include_str!("../templates/domain.xml.j2")),
    (META_DATA, include_str!("../templates/meta-data.yaml.j2")),
    (USER_DATA, include_str!("../templates/user-data.yaml.j2")),
];

const XML_ESCAPE: &str = "xml";

/// Renders the named template with `ctx`.
pub fn render(name: &str, ctx: Value) -> Result<String, ProvisionError> {
    let template_error = |source| ProvisionError::Template {
        template: format!("templates/{name}"),
        source,
    };
    let env = environment().map_err(template_error)?;
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(template_error)
}

fn environment() -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Jinja's usual block whitespace rules, so `{% if %}` lines leave no blank lines behind.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()?,
    );
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".xml.j2") || name.ends_with(".xml") {
            AutoEscape::Custom(XML_ESCAPE.into())
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(xml_formatter);
    for (name, source) in SOURCES {
        env.add_template(name, source)?;
    }
    Ok(env)
}

fn xml_formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    match state.auto_escape() {
        AutoEscape::Custom(mode) if mode == XML_ESCAPE && !value.is_safe() => {
            let text = if value.is_none() || value.is_undefined() {
                String::new()
            } else {
                value.to_string()
            };
            out.write_str(&escape_xml(&text)).map_err(Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Escapes text for XML element content and both kinds of quoted attributes.
pub fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escaping_covers_the_five_specials_and_leaves_paths_alone() {
        assert_eq!(
            escape_xml(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;"
        );
        assert_eq!(
            escape_xml("/var/lib/minion/vms/x/overlay.qcow2"),
            "/var/lib/minion/vms/x/overlay.qcow2"
        );
    }

    #[test]
    fn every_template_parses() {
        let env = environment().expect("templates parse");
        for (name, _) in SOURCES {
            env.get_template(name).expect("template present");
        }
    }

    #[test]
    fn undefined_variables_are_errors_naming_the_template() {
        let err = render(META_DATA, minijinja::context! {}).expect_err("strict undefined");
        assert!(
            err.to_string().contains("templates/meta-data.yaml.j2"),
            "{err}"
        );
    }
}
