//! The OIDC test harness (`tests/src/oidc.rs`) against the real provider
//! (`tests/oidc/provider.mjs`, panva's oidc-provider on Node): what the
//! vault-server OIDC tests rely on holds — a device-flow sign-in gives an
//! ID token of this issuer for `vault-cli` with the account's groups,
//! signed by a key the JWKS lists; a device code is good once; refresh
//! tokens work until the account is disabled; changed groups and rotated
//! keys show in the next refreshed token; forged tokens are signed with
//! the provider's own key.
//!
//! Skips (with `SKIP`) without Node or `npm ci --prefix tests/oidc`, unless
//! `VAULT_TEST_REQUIRE_OIDC=1` (set by `.ci/run`).

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Value, json};
use vault_e2e::oidc::{
    CLIENT_ID, DEFAULT_SCOPE, DEVICE_CODE_GRANT, OidcProvider, b64url_decode, jwt_parts,
};
use vault_e2e::{base64_decode, contains_bytes};

/// Whether `token`'s signature checks out against the key of `kid` in
/// `jwks` (RS256, ES256 or EdDSA), the way a relying party checks it.
fn signed_by(jwks: &Value, kid: &str, token: &str) -> bool {
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no key {kid} in the JWKS: {jwks}"));
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = b64url_decode(sig);
    let field = |name: &str| b64url_decode(key[name].as_str().unwrap());
    match key["kty"].as_str().unwrap() {
        "RSA" => RsaPublicKeyComponents {
            n: field("n"),
            e: field("e"),
        }
        .verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &sig,
        )
        .is_ok(),
        "EC" => {
            let point = [vec![4u8], field("x"), field("y")].concat();
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &sig)
                .is_ok()
        }
        "OKP" => UnparsedPublicKey::new(&signature::ED25519, field("x"))
            .verify(input.as_bytes(), &sig)
            .is_ok(),
        other => panic!("unexpected key type {other}"),
    }
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn a_device_flow_sign_in_gives_an_id_token_of_this_issuer_for_vault_cli() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let disco = idp.discovery();
    assert_eq!(disco["issuer"], idp.issuer());
    assert_eq!(disco["token_endpoint"], idp.url("/token"));
    assert_eq!(
        disco["device_authorization_endpoint"],
        idp.url("/device/auth")
    );

    let tokens = idp.login("alice");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], DEFAULT_SCOPE);
    for key in ["access_token", "refresh_token", "device_code"] {
        assert!(!str_of(&tokens, key).is_empty());
    }
    let id_token = str_of(&tokens, "id_token");
    let (header, claims) = jwt_parts(id_token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], idp.kid().as_str());
    assert!(signed_by(&idp.jwks(), &idp.kid(), id_token));
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["groups"], json!(["LDAP_ML_TEAM"]));
    // The default ID token lifetime (OIDC_ID_TOKEN_TTL).
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );

    for (account, groups) in [
        ("bob", json!([])),
        ("carol", json!(["LDAP_ML_TEAM", "LDAP_OPS"])),
    ] {
        let (_, claims) = jwt_parts(str_of(&idp.login(account), "id_token"));
        assert_eq!(claims["sub"], account);
        assert_eq!(claims["groups"], groups, "{account}");
    }
}

#[test]
fn a_device_code_is_redeemed_once() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let tokens = idp.login("alice");
    let (status, answer) = idp.token_request(&[
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", str_of(&tokens, "device_code")),
    ]);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_grant");
}

#[test]
fn a_code_started_elsewhere_is_approved_through_the_pages() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let auth = idp.device_authorization(DEFAULT_SCOPE);
    let device_code = str_of(&auth, "device_code");
    let poll = [
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", device_code),
    ];
    let (status, answer) = idp.token_request(&poll);
    assert_eq!(
        (status, &answer["error"]),
        (400, &json!("authorization_pending"))
    );

    idp.approve(str_of(&auth, "user_code"), "bob");
    let (status, answer) = idp.token_request(&poll);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(jwt_parts(str_of(&answer, "id_token")).1["sub"], "bob");

    // A used code, and one that never was, are refused.
    let (status, answer) = idp.try_approve(str_of(&auth, "user_code"), "alice");
    assert_eq!((status, &answer["approved"]), (400, &json!(false)));
    let (status, answer) = idp.try_approve("BCDF-GHJK", "alice");
    assert_eq!((status, &answer["approved"]), (400, &json!(false)));
}

#[test]
fn refresh_gives_a_new_id_token_until_the_account_is_disabled() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let tokens = idp.login("alice");
    let (status, fresh) = idp.refresh(str_of(&tokens, "refresh_token"));
    assert_eq!(status, 200, "{fresh}");
    let id_token = str_of(&fresh, "id_token");
    let (_, claims) = jwt_parts(id_token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], idp.issuer());
    assert!(signed_by(&idp.jwks(), &idp.kid(), id_token));
    // Public client: the refresh token rotates.
    assert_ne!(fresh["refresh_token"], tokens["refresh_token"]);

    idp.disable("alice");
    let (status, answer) = idp.refresh(str_of(&fresh, "refresh_token"));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_grant");

    // Enabled again, alice signs in anew.
    idp.enable("alice");
    assert_eq!(
        jwt_parts(str_of(&idp.login("alice"), "id_token")).1["sub"],
        "alice"
    );
}

#[test]
fn changed_groups_show_in_the_next_refreshed_id_token() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let tokens = idp.login("alice");
    let mut refresh_token = str_of(&tokens, "refresh_token").to_owned();
    for groups in [vec!["LDAP_OPS", "LDAP_OTHER"], vec![]] {
        idp.set_groups("alice", &groups);
        let (status, fresh) = idp.refresh(&refresh_token);
        assert_eq!(status, 200, "{fresh}");
        assert_eq!(
            jwt_parts(str_of(&fresh, "id_token")).1["groups"],
            json!(groups)
        );
        refresh_token = str_of(&fresh, "refresh_token").to_owned();
    }
}

#[test]
fn a_rotated_key_signs_the_next_id_token_and_is_in_the_jwks() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    let first = idp.kid();
    let tokens = idp.login("alice");
    assert_eq!(jwt_parts(str_of(&tokens, "id_token")).0["kid"], first);

    let second = idp.rotate();
    assert_ne!(second, first);
    assert_eq!(idp.kid(), second);
    // The grant survived the rotation.
    let (status, fresh) = idp.refresh(str_of(&tokens, "refresh_token"));
    assert_eq!(status, 200, "{fresh}");
    let id_token = str_of(&fresh, "id_token");
    assert_eq!(jwt_parts(id_token).0["kid"], second.as_str());
    let jwks = idp.jwks();
    assert_eq!(kids(&jwks), [second.as_str(), first.as_str()]);
    assert!(signed_by(&jwks, &second, id_token));
    assert!(!signed_by(&jwks, &first, id_token));
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["d"].is_null()),
        "private key material in the JWKS: {jwks}"
    );

    let third = idp.rotate_drop_old();
    assert_eq!(kids(&idp.jwks()), [third.as_str()]);
    let (status, again) = idp.refresh(str_of(&fresh, "refresh_token"));
    assert_eq!(status, 200, "{again}");
    assert_eq!(jwt_parts(str_of(&again, "id_token")).0["kid"], third);
}

#[test]
fn forged_tokens_are_signed_with_the_providers_current_key() {
    let Some(idp) = OidcProvider::start() else {
        return;
    };
    idp.rotate();
    let kid = idp.kid();
    let jwks = idp.jwks();
    let claims = json!({
        "iss": "http://evil.example.test", "aud": "someone-else", "sub": "alice",
        "exp": 1, "groups": ["LDAP_OPS"],
    });

    let token = idp.sign(json!({}), claims.clone());
    let (header, payload) = jwt_parts(&token);
    assert_eq!(header, json!({"alg": "RS256", "kid": kid, "typ": "JWT"}));
    assert_eq!(payload, claims, "the claims go in exactly as given");
    assert!(signed_by(&jwks, &kid, &token));

    // The header is merged over the default.
    let token = idp.sign(
        json!({"kid": "unknown-kid", "typ": "at+jwt"}),
        claims.clone(),
    );
    let (header, _) = jwt_parts(&token);
    assert_eq!(
        header,
        json!({"alg": "RS256", "kid": "unknown-kid", "typ": "at+jwt"})
    );
    assert!(signed_by(&jwks, &kid, &token));

    // alg none: no signature at all.
    let token = idp.sign(json!({"alg": "none"}), claims.clone());
    assert!(token.ends_with('.'), "{token}");
    assert_eq!(jwt_parts(&token).0["alg"], "none");

    // The public key as PEM: SPKI holding the JWKS's modulus.
    let pem = idp.public_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert!(pem.ends_with("-----END PUBLIC KEY-----\n"), "{pem}");
    let der = base64_decode(
        &pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    );
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str());
    let n = b64url_decode(key.unwrap()["n"].as_str().unwrap());
    assert!(contains_bytes(&der, &n), "the PEM is not the current key");

    // HS256 keyed with that PEM's text (algorithm confusion).
    let token = idp.sign(json!({"alg": "HS256"}), claims);
    let (input, sig) = token.rsplit_once('.').unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
    assert!(ring::hmac::verify(&key, input.as_bytes(), &b64url_decode(sig)).is_ok());
}

#[test]
fn other_signing_algorithms_and_a_short_id_token_life() {
    for alg in ["ES256", "EdDSA"] {
        let Some(idp) = OidcProvider::start_with(&[("SIGN_ALG", alg), ("OIDC_ID_TOKEN_TTL", "5")])
        else {
            return;
        };
        assert_eq!(idp.alg(), alg);
        let id_token = idp.login("carol")["id_token"].as_str().unwrap().to_owned();
        let (header, claims) = jwt_parts(&id_token);
        assert_eq!(header["alg"], alg);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            5
        );
        let jwks = idp.jwks();
        assert!(signed_by(&jwks, &idp.kid(), &id_token), "{alg}");
        let forged = idp.sign(json!({}), json!({"sub": "carol"}));
        assert!(signed_by(&jwks, &idp.kid(), &forged), "{alg}");
        assert!(idp.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}

#[test]
fn a_stopped_provider_is_down() {
    let Some(mut idp) = OidcProvider::start() else {
        return;
    };
    assert!(TcpStream::connect(idp.addr()).is_ok());
    idp.stop();
    assert!(TcpStream::connect(idp.addr()).is_err());
}
