//! The principal of a verified TLS client certificate (`proxy.tls.principal_from`).
//!
//! Called only after rustls verified the certificate chain against `client_ca_file`, so the
//! certificate is well-formed DER issued by a trusted CA; the reader below still checks every
//! length and fails with a message instead of panicking on anything unexpected.
//!
//! * `subject` (default): the subject distinguished name in RFC 4514 form, most specific
//!   attribute first, as Kafka's default SSL principal builder writes it, e.g.
//!   `CN=app,OU=payments,O=Example,C=DE`. Known attribute types use their short names (`CN`, `O`,
//!   `OU`, `C`, `L`, `ST`, `STREET`, `DC`, `UID`, `SERIALNUMBER`, `emailAddress`), others their
//!   dotted OID with the DER value in hex (`1.2.3.4=#0c0141`). Special characters are escaped
//!   with `\`.
//! * `cn`: the (last) common name of the subject, e.g. `app`.
//! * `san_dns`: the first DNS name of the subjectAltName extension, e.g. `app.example.com`.

use serde::Deserialize;

/// Which part of a verified client certificate names the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalFrom {
    /// The subject DN in RFC 4514 form, e.g. `CN=app,O=Example` (default; Kafka's form).
    #[default]
    Subject,
    /// The subject's common name, e.g. `app`.
    Cn,
    /// The first DNS name in the subjectAltName extension.
    SanDns,
}

impl PrincipalFrom {
    /// The config spelling, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Cn => "cn",
            Self::SanDns => "san_dns",
        }
    }
}

/// Longest principal name derived from a certificate, in bytes.
const MAX_NAME_LEN: usize = 1024;

/// The principal name of the DER certificate `der` as `from` says, or why there is none (no CN,
/// no DNS SAN, not parseable).
pub fn principal_name(der: &[u8], from: PrincipalFrom) -> Result<String, String> {
    let tbs = Tbs::parse(der)?;
    let name = match from {
        PrincipalFrom::Subject => {
            let dn = render_dn(tbs.subject)?;
            if dn.is_empty() {
                return Err("the certificate's subject is empty".into());
            }
            dn
        }
        PrincipalFrom::Cn => {
            last_cn(tbs.subject)?.ok_or("the certificate's subject has no common name (CN)")?
        }
        PrincipalFrom::SanDns => first_san_dns(tbs.extensions)?
            .ok_or("the certificate has no DNS name in its subjectAltName extension")?,
    };
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the certificate's {} is {} bytes long (at most {MAX_NAME_LEN})",
            from.label(),
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "the certificate's {} contains a control character",
            from.label()
        ));
    }
    Ok(name)
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const EXPLICIT_0: u8 = 0xa0;
const EXPLICIT_3: u8 = 0xa3;
const SAN_DNS: u8 = 0x82;
/// 2.5.29.17 subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.4.3 commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// A DER reader over one constructed value's contents.
struct Der<'a> {
    b: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(b: &'a [u8]) -> Self {
        Der { b }
    }

    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.b.first().copied()
    }

    /// The next TLV: (tag, contents, whole encoding).
    fn next(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), String> {
        let bad = || "malformed certificate (DER)".to_string();
        let tag = *self.b.first().ok_or_else(bad)?;
        if tag & 0x1f == 0x1f {
            return Err("malformed certificate (multi-byte DER tag)".into());
        }
        let first = *self.b.get(1).ok_or_else(bad)?;
        let (len, hdr) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return Err(bad());
            }
            let bytes = self.b.get(2..2 + n).ok_or_else(bad)?;
            (
                bytes.iter().fold(0usize, |a, &x| (a << 8) | x as usize),
                2 + n,
            )
        };
        let end = hdr.checked_add(len).ok_or_else(bad)?;
        let whole = self.b.get(..end).ok_or_else(bad)?;
        self.b = &self.b[end..];
        Ok((tag, &whole[hdr..], whole))
    }

    /// The next TLV, which must have tag `tag`; returns its contents.
    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], String> {
        let (t, c, _) = self.next()?;
        if t != tag {
            return Err(format!(
                "malformed certificate: expected {what} (tag {tag:#04x}), found tag {t:#04x}"
            ));
        }
        Ok(c)
    }
}

/// The parts of a TBSCertificate this module reads.
struct Tbs<'a> {
    /// Contents of the subject Name SEQUENCE.
    subject: &'a [u8],
    /// Contents of the Extensions SEQUENCE (empty when absent).
    extensions: &'a [u8],
}

impl<'a> Tbs<'a> {
    fn parse(der: &'a [u8]) -> Result<Self, String> {
        let cert = Der::new(der).expect(SEQUENCE, "Certificate")?;
        let mut tbs = Der::new(Der::new(cert).expect(SEQUENCE, "TBSCertificate")?);
        if tbs.peek_tag() == Some(EXPLICIT_0) {
            tbs.next()?; // version
        }
        tbs.next()?; // serialNumber
        tbs.expect(SEQUENCE, "signature algorithm")?;
        tbs.expect(SEQUENCE, "issuer")?;
        tbs.expect(SEQUENCE, "validity")?;
        let subject = tbs.expect(SEQUENCE, "subject")?;
        tbs.expect(SEQUENCE, "subjectPublicKeyInfo")?;
        let mut extensions: &[u8] = &[];
        while !tbs.is_empty() {
            let (tag, contents, _) = tbs.next()?;
            if tag == EXPLICIT_3 {
                extensions = Der::new(contents).expect(SEQUENCE, "extensions")?;
            }
        }
        Ok(Tbs {
            subject,
            extensions,
        })
    }
}

/// One AttributeTypeAndValue: (OID bytes, value tag, value contents, value encoding).
type Attribute<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// The RDNs of a Name, in certificate order, each a list of attributes.
fn rdns(name: &[u8]) -> Result<Vec<Vec<Attribute<'_>>>, String> {
    let mut out = Vec::new();
    let mut seq = Der::new(name);
    while !seq.is_empty() {
        let mut set = Der::new(seq.expect(SET, "RelativeDistinguishedName")?);
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let mut atv = Der::new(set.expect(SEQUENCE, "AttributeTypeAndValue")?);
            let oid = atv.expect(OID, "attribute type")?;
            let (tag, contents, whole) = atv.next()?;
            rdn.push((oid, tag, contents, whole));
        }
        out.push(rdn);
    }
    Ok(out)
}

/// A directory string's text, when it is one of the string types certificates use.
fn text(tag: u8, v: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => std::str::from_utf8(v).ok().map(str::to_owned),
        // TeletexString: in practice Latin-1
        0x14 => Some(v.iter().map(|&c| c as char).collect()),
        // BMPString: UTF-16BE
        0x1e if v.len().is_multiple_of(2) => {
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "SERIALNUMBER",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

/// Dotted form of a DER OID.
fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc = 0u64;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Escapes an attribute value per RFC 4514 section 2.4.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject in RFC 4514 form: RDNs in reverse order, separated by `,`; attributes of a
/// multi-valued RDN joined by `+`.
fn render_dn(name: &[u8]) -> Result<String, String> {
    let mut rdns = rdns(name)?;
    rdns.reverse();
    let parts: Vec<String> = rdns
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(
                    |(oid, tag, v, whole)| match (short_name(oid), text(*tag, v)) {
                        (Some(n), Some(t)) => format!("{n}={}", escape(&t)),
                        (n, _) => format!(
                            "{}=#{}",
                            n.map_or_else(|| dotted(oid), str::to_owned),
                            hex::encode(whole)
                        ),
                    },
                )
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    Ok(parts.join(","))
}

/// The most specific (last) common name of the subject.
fn last_cn(name: &[u8]) -> Result<Option<String>, String> {
    let mut found = None;
    for rdn in rdns(name)? {
        for (oid, tag, v, _) in rdn {
            if oid == OID_CN {
                found = Some(text(tag, v).ok_or("the certificate's CN is not a text string")?);
            }
        }
    }
    Ok(found)
}

/// The first dNSName of the subjectAltName extension.
fn first_san_dns(extensions: &[u8]) -> Result<Option<String>, String> {
    let mut exts = Der::new(extensions);
    while !exts.is_empty() {
        let mut ext = Der::new(exts.expect(SEQUENCE, "Extension")?);
        let oid = ext.expect(OID, "extension id")?;
        if ext.peek_tag() == Some(BOOLEAN) {
            ext.next()?;
        }
        let value = ext.expect(OCTET_STRING, "extension value")?;
        if oid != OID_SAN {
            continue;
        }
        let mut names = Der::new(Der::new(value).expect(SEQUENCE, "GeneralNames")?);
        while !names.is_empty() {
            let (tag, v, _) = names.next()?;
            if tag == SAN_DNS {
                return std::str::from_utf8(v)
                    .map(|s| Some(s.to_owned()))
                    .map_err(|_| "a DNS name in subjectAltName is not ASCII".into());
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wraps `contents` in a DER TLV.
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if contents.len() < 0x80 {
            out.push(contents.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(contents);
        out
    }

    fn atv(oid: &[u8], tag: u8, v: &str) -> Vec<u8> {
        let mut c = tlv(OID, oid);
        c.extend(tlv(tag, v.as_bytes()));
        tlv(SEQUENCE, &c)
    }

    /// A certificate with the given subject RDNs (each a list of attributes) and SAN DNS names.
    fn cert(subject: &[Vec<Vec<u8>>], dns: &[&str]) -> Vec<u8> {
        let name: Vec<u8> = subject
            .iter()
            .flat_map(|rdn| tlv(SET, &rdn.concat()))
            .collect();
        let mut tbs = tlv(EXPLICIT_0, &tlv(0x02, &[2]));
        tbs.extend(tlv(0x02, &[1, 2, 3]));
        tbs.extend(tlv(SEQUENCE, &tlv(OID, &[0x2a, 0x86, 0x48])));
        tbs.extend(tlv(SEQUENCE, &[]));
        tbs.extend(tlv(SEQUENCE, &[]));
        tbs.extend(tlv(SEQUENCE, &name));
        tbs.extend(tlv(SEQUENCE, &[]));
        let gns: Vec<u8> = dns
            .iter()
            .flat_map(|d| tlv(SAN_DNS, d.as_bytes()))
            .chain(tlv(0x87, &[127, 0, 0, 1]))
            .collect();
        let mut basic = tlv(OID, &[0x55, 0x1d, 0x13]);
        basic.extend(tlv(BOOLEAN, &[0xff]));
        basic.extend(tlv(OCTET_STRING, &tlv(SEQUENCE, &[])));
        let mut san = tlv(OID, OID_SAN);
        san.extend(tlv(OCTET_STRING, &tlv(SEQUENCE, &gns)));
        let exts = [tlv(SEQUENCE, &basic), tlv(SEQUENCE, &san)].concat();
        tbs.extend(tlv(EXPLICIT_3, &tlv(SEQUENCE, &exts)));
        let mut c = tlv(SEQUENCE, &tbs);
        c.extend(tlv(SEQUENCE, &[]));
        c.extend(tlv(0x03, &[0]));
        tlv(SEQUENCE, &c)
    }

    #[test]
    fn subject_cn_and_san_are_derived_as_documented() {
        let der = cert(
            &[
                vec![atv(&[0x55, 0x04, 0x06], 0x13, "DE")],
                vec![atv(&[0x55, 0x04, 0x0a], 0x0c, "Example, Inc.")],
                vec![
                    atv(&[0x55, 0x04, 0x0b], 0x0c, "payments"),
                    atv(&[0x2a, 0x03, 0x04], 0x0c, "x"),
                ],
                vec![atv(OID_CN, 0x0c, "app")],
            ],
            &["app.example.com", "other.example.com"],
        );
        assert_eq!(
            principal_name(&der, PrincipalFrom::Subject).unwrap(),
            r"CN=app,OU=payments+1.2.3.4=#0c0178,O=Example\, Inc.,C=DE"
        );
        assert_eq!(principal_name(&der, PrincipalFrom::Cn).unwrap(), "app");
        assert_eq!(
            principal_name(&der, PrincipalFrom::SanDns).unwrap(),
            "app.example.com"
        );
    }

    #[test]
    fn missing_parts_and_garbage_are_errors_not_panics() {
        let der = cert(&[vec![atv(&[0x55, 0x04, 0x0a], 0x0c, "Org")]], &[]);
        let e = principal_name(&der, PrincipalFrom::Cn).unwrap_err();
        assert!(e.contains("no common name"), "{e}");
        let e = principal_name(&der, PrincipalFrom::SanDns).unwrap_err();
        assert!(e.contains("subjectAltName"), "{e}");
        let empty = cert(&[], &[]);
        assert!(principal_name(&empty, PrincipalFrom::Subject).is_err());
        let evil = cert(&[vec![atv(OID_CN, 0x0c, "a\nb")]], &[]);
        assert!(principal_name(&evil, PrincipalFrom::Cn)
            .unwrap_err()
            .contains("control"));
        // Every truncation of a valid certificate is an error, never a panic.
        let good = cert(&[vec![atv(OID_CN, 0x0c, "app")]], &["a.b"]);
        for n in 0..good.len() {
            let _ = principal_name(&good[..n], PrincipalFrom::Subject);
            let _ = principal_name(&good[..n], PrincipalFrom::SanDns);
        }
        assert!(principal_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], PrincipalFrom::Cn).is_err());
    }

    /// A certificate made by the openssl CLI: the subject matches openssl's own RFC 2253 form.
    #[test]
    fn a_real_certificate_matches_openssl_rfc2253() {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .expect("openssl CLI (scripts/install-deps.sh installs it)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "1",
            "-subj",
            "/C=DE/O=Example, Inc./OU=payments/CN=app",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:app.example.com",
        ]);
        let want = run(&[
            "x509", "-in", "c.pem", "-noout", "-subject", "-nameopt", "RFC2253",
        ]);
        let want = want.trim().trim_start_matches("subject=").to_owned();
        let der =
            rustls::pki_types::CertificateDer::from_pem_file(dir.path().join("c.pem")).unwrap();
        assert_eq!(principal_name(&der, PrincipalFrom::Subject).unwrap(), want);
        assert_eq!(want, r"CN=app,OU=payments,O=Example\, Inc.,C=DE");
        assert_eq!(principal_name(&der, PrincipalFrom::Cn).unwrap(), "app");
        assert_eq!(
            principal_name(&der, PrincipalFrom::SanDns).unwrap(),
            "app.example.com"
        );
    }
}
