//! Tests of `control.rs`.

use super::tls::server_name;
use super::*;

#[test]
fn the_tls_name_is_the_host_of_the_server_address() {
    assert_eq!(host_of("localhost:9001"), "localhost");
    assert_eq!(host_of("127.0.0.1:9001"), "127.0.0.1");
    assert_eq!(host_of("[::1]:9001"), "::1");
    assert_eq!(host_of("chat.example"), "chat.example");
    assert_eq!(host_of("::1"), "::1");
    assert!(server_name(host_of("[::1]:9")).is_ok_and(|n| matches!(n, ServerName::IpAddress(_))));
    assert!(server_name("").is_err());
}

#[test]
fn an_untrusted_certificate_says_why_and_what_to_do() {
    let e = ControlError::Untrusted {
        name: "localhost".into(),
        why: CertificateError::UnknownIssuer,
    };
    assert_eq!(
        e.to_string(),
        "the server's certificate is not trusted for localhost: UnknownIssuer; pass --ca FILE for a private CA"
    );
    let e = ControlError::Untrusted {
        name: "h".into(),
        why: CertificateError::Expired,
    };
    assert!(
        e.to_string()
            .starts_with("the server's certificate is not trusted for h: Expired")
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_refused() {
    let e = Tls::from_ca_pem(b"not pem at all").expect_err("no CA");
    assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
}
