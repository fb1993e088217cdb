//! The small XML tree ONVIF replies are read into: elements with resolved namespaces, their
//! text, attributes and place in the document, and the errors a document that is not
//! well-formed (or too deep, or cut short) gives.

use std::ops::Range;

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::{NsReader, XmlVersion};

/// Deeper replies are refused: real ones nest about ten levels.
const MAX_XML_DEPTH: usize = 64;

/// Why a text is not a document this parser accepts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum XmlError {
    #[error("{detail}: the document ends early (truncated)")]
    EndsEarly { detail: String },
    #[error("{detail} (at byte {at})")]
    Syntax { detail: String, at: u64 },
    #[error("elements nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("an end tag without a start tag")]
    EndWithoutStart,
    #[error("the document ends inside <{name}> (truncated)")]
    EndsInside { name: String },
    #[error("no XML element in it")]
    NoElement,
    #[error("bad attribute in <{tag}>: {detail}")]
    BadAttribute { tag: String, detail: String },
    #[error("bad attribute value in <{tag}>: {detail}")]
    BadAttributeValue { tag: String, detail: String },
    #[error("the namespace prefix {prefix:?} is not declared")]
    UndeclaredPrefix { prefix: String },
    #[error("more than one root element")]
    MultipleRoots,
    #[error("text outside the root element: {excerpt:?}")]
    TextOutsideRoot { excerpt: String },
    #[error("{0}")]
    BadCharacterReference(String),
    #[error("unknown entity &{name};")]
    UnknownEntity { name: String },
}

/// An element of a parsed reply, with resolved namespaces.
#[derive(Debug, Default)]
pub(super) struct Element {
    /// The namespace URI; empty for none.
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) attributes: Vec<Attribute>,
    /// The element's own text, entities resolved.
    pub(super) text: String,
    pub(super) children: Vec<Element>,
    /// Where the element is in the document, tags included.
    pub(super) span: Range<usize>,
    /// The namespaces of prefixes used in the text, for QName values (topics, fault codes).
    text_prefixes: Vec<(String, String)>,
}

#[derive(Debug)]
pub(super) struct Attribute {
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) value: String,
}

impl Element {
    pub(super) fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    pub(super) fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    pub(super) fn take_child(&mut self, ns: &str, name: &str) -> Option<Element> {
        let index = self.children.iter().position(|c| c.is(ns, name))?;
        Some(self.children.swap_remove(index))
    }

    pub(super) fn children_named<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    /// The element reached by following `steps` (namespace, name) down from this one.
    pub(super) fn path(&self, steps: &[(&str, &str)]) -> Option<&Element> {
        steps
            .iter()
            .try_fold(self, |element, (ns, name)| element.child(ns, name))
    }

    /// An unqualified attribute's value.
    pub(super) fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.ns.is_empty() && a.name == name)
            .map(|a| a.value.as_str())
    }

    pub(super) fn text(&self) -> &str {
        self.text.trim()
    }

    pub(super) fn namespace_of(&self, prefix: &str) -> Option<&str> {
        self.text_prefixes
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, ns)| ns.as_str())
    }
}

/// The start of a reply's text on one line, for error messages.
pub(super) fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 120;
    let words: Vec<&str> = text.split_whitespace().collect();
    let line: String = words.join(" ").chars().filter(|c| !c.is_control()).collect();
    if line.chars().count() > MAX_CHARS {
        format!("{}...", line.chars().take(MAX_CHARS).collect::<String>())
    } else {
        line
    }
}

/// Parses a whole document. Truncated documents (elements left open at the end), text outside
/// the root, undeclared prefixes and unknown entities are errors.
pub(super) fn parse_xml(text: &str) -> Result<Element, XmlError> {
    let mut reader = NsReader::from_str(text);
    let mut open: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let start = position(reader.buffer_position(), text);
        let event = reader.read_event().map_err(|e| describe_xml_error(&e, &reader, text))?;
        let end = position(reader.buffer_position(), text);
        match event {
            Event::Start(tag) => {
                if open.len() >= MAX_XML_DEPTH {
                    return Err(XmlError::TooDeep { limit: MAX_XML_DEPTH });
                }
                open.push(open_element(&reader, &tag, start)?);
            }
            Event::Empty(tag) => {
                let mut element = open_element(&reader, &tag, start)?;
                element.span.end = end;
                close_element(element, &mut open, &mut root)?;
            }
            Event::End(_) => {
                let mut element = open.pop().ok_or(XmlError::EndWithoutStart)?;
                element.span.end = end;
                element.text_prefixes = text_prefixes(&reader, &element.text);
                close_element(element, &mut open, &mut root)?;
            }
            Event::Text(content) => append_text(&mut open, &content.xml10_content())?,
            Event::CData(content) => append_text(&mut open, &content.xml10_content())?,
            Event::GeneralRef(reference) => append_text(&mut open, &resolve_reference(&reference)?)?,
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if let Some(element) = open.last() {
        return Err(XmlError::EndsInside {
            name: element.name.clone(),
        });
    }
    root.ok_or(XmlError::NoElement)
}

/// The parser's error, saying so when the document broke off (a reply cut short).
fn describe_xml_error(e: &quick_xml::Error, reader: &NsReader<&[u8]>, text: &str) -> XmlError {
    let detail = e.to_string();
    if position(reader.buffer_position(), text) >= text.len() {
        XmlError::EndsEarly { detail }
    } else {
        XmlError::Syntax {
            detail,
            at: reader.error_position(),
        }
    }
}

fn position(offset: u64, text: &str) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX).min(text.len())
}

fn open_element(reader: &NsReader<&[u8]>, tag: &BytesStart, start: usize) -> Result<Element, XmlError> {
    let resolver = reader.resolver();
    let (ns, name) = resolver.resolve_element(tag.name());
    let tag_name = || tag.name().into_inner().to_owned();
    let mut attributes = Vec::new();
    for attribute in tag.attributes() {
        let attribute = attribute.map_err(|e| XmlError::BadAttribute {
            tag: tag_name(),
            detail: e.to_string(),
        })?;
        if attribute.key.as_namespace_binding().is_some() {
            continue;
        }
        let (ns, name) = resolver.resolve_attribute(attribute.key);
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| XmlError::BadAttributeValue {
                tag: tag_name(),
                detail: e.to_string(),
            })?;
        attributes.push(Attribute {
            ns: namespace_uri(ns)?,
            name: name.into_inner().to_owned(),
            value: value.into_owned(),
        });
    }
    Ok(Element {
        ns: namespace_uri(ns)?,
        name: name.into_inner().to_owned(),
        attributes,
        span: start..start,
        ..Element::default()
    })
}

fn namespace_uri(result: ResolveResult<'_>) -> Result<String, XmlError> {
    match result {
        ResolveResult::Bound(ns) => Ok(ns.into_inner().to_owned()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(prefix) => Err(XmlError::UndeclaredPrefix { prefix }),
    }
}

fn close_element(element: Element, open: &mut [Element], root: &mut Option<Element>) -> Result<(), XmlError> {
    match open.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_some() => return Err(XmlError::MultipleRoots),
        None => *root = Some(element),
    }
    Ok(())
}

fn append_text(open: &mut [Element], text: &str) -> Result<(), XmlError> {
    match open.last_mut() {
        Some(element) => element.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => return Err(XmlError::TextOutsideRoot { excerpt: excerpt(text) }),
    }
    Ok(())
}

fn resolve_reference(reference: &BytesRef) -> Result<String, XmlError> {
    if let Some(c) = reference
        .resolve_char_ref()
        .map_err(|e| XmlError::BadCharacterReference(e.to_string()))?
    {
        return Ok(c.to_string());
    }
    let name = reference.clone().into_inner();
    quick_xml::escape::resolve_predefined_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| XmlError::UnknownEntity { name: name.to_string() })
}

/// The namespaces of the prefixes in a text that holds QNames (`tns1:A/tns1:B`, `ter:X`).
fn text_prefixes(reader: &NsReader<&[u8]>, text: &str) -> Vec<(String, String)> {
    const MAX_QNAME_TEXT: usize = 1024;
    let text = text.trim();
    if text.len() > MAX_QNAME_TEXT || !text.contains(':') {
        return Vec::new();
    }
    let mut prefixes: Vec<(String, String)> = Vec::new();
    for step in text.split(['/', '|', ' ']) {
        let Some((prefix, _)) = step.split_once(':') else {
            continue;
        };
        if prefix.is_empty() || prefixes.iter().any(|(p, _)| p == prefix) {
            continue;
        }
        let (resolved, _) = reader.resolver().resolve_element(QName(step));
        if let ResolveResult::Bound(ns) = resolved {
            prefixes.push((prefix.to_owned(), ns.into_inner().to_owned()));
        }
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_documents_are_refused() {
        let deep = "<a>".repeat(10_000);
        assert!(parse_xml(&deep).is_err_and(|e| e.to_string().contains("deeper")));
    }
}
