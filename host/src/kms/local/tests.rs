//! Unit tests of the local key-file KMS.

use super::*;

fn master() -> SecretKey {
    Zeroizing::new([7u8; 32])
}

#[tokio::test]
async fn round_trip_across_fresh_instances_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    let err = kms.generate_data_key("orders").await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::UnknownKey);
    assert!(kms.create_key("orders").unwrap());
    assert!(!kms.create_key("orders").unwrap());
    let dk1 = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(dk1.kek_version, 1);
    let d1 = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();

    // The file never holds KEK material or DEKs in clear.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&B64.encode(dk1.plaintext.as_ref())));

    assert_eq!(kms.rotate_key("orders").unwrap(), 2);
    let dk2 = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(dk2.kek_version, 2);

    // Fresh instance, empty caches: both EDEKs decrypt, derivation is reproducible.
    let fresh = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    assert_eq!(
        *fresh.decrypt_data_key("orders", &dk1.edek).await.unwrap(),
        *dk1.plaintext
    );
    assert_eq!(
        *fresh.decrypt_data_key("orders", &dk2.edek).await.unwrap(),
        *dk2.plaintext
    );
    let again = fresh
        .derive_key(DeriveRequest::new("orders", b"ctx", Some(1)))
        .await
        .unwrap();
    assert_eq!(*again.material, *d1.material);
    let latest = fresh
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();
    assert_eq!(latest.kek_version, 2);
    assert_ne!(*latest.material, *d1.material);
    assert_eq!(fresh.key_info("orders").await.unwrap().latest_version, 2);

    // EDEK bound to its key id.
    fresh.create_key("other").unwrap();
    let err = fresh
        .decrypt_data_key("other", &dk1.edek)
        .await
        .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::InvalidCiphertext);
    let err = fresh.decrypt_data_key("nope", &dk1.edek).await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::UnknownKey);
}

#[tokio::test]
async fn auto_create_and_pickup_of_keys_created_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/keys.json");
    let a = LocalKms::open_with_master_key(&path, master(), true).unwrap();
    let dk = a.generate_data_key("t1").await.unwrap();
    // Decrypt never auto-creates.
    assert_eq!(
        a.decrypt_data_key("t2", &dk.edek).await.unwrap_err().kind,
        KmsErrorKind::UnknownKey
    );
    // A second instance (e.g. the CLI) creates a key: the first picks it up on a miss.
    let b = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    b.create_key("t3").unwrap();
    let dk3 = a.generate_data_key("t3").await.unwrap();
    assert_eq!(
        *b.decrypt_data_key("t3", &dk3.edek).await.unwrap(),
        *dk3.plaintext
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn wrong_master_key_and_bad_master_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    kms.create_key("k").unwrap();
    let err = LocalKms::open_with_master_key(&path, Zeroizing::new([8u8; 32]), false).unwrap_err();
    assert!(
        format!("{err:#}").contains("master key does not match"),
        "{err:#}"
    );
    assert!(parse_master_key("c2hvcnQ=").is_err());
    assert!(parse_master_key("not base64!!").is_err());
    assert_eq!(*parse_master_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
    assert_eq!(*parse_master_key(&B64.encode([3u8; 32])).unwrap(), [3; 32]);
}

#[test]
fn config_validation_reports_problems() {
    let c = LocalKmsConfig {
        key_file: PathBuf::new(),
        master_key_env: Some("A=B".into()),
        master_key_file: Some("/x".into()),
        auto_create_keys: false,
        max_auto_created_keys: 0,
        max_auto_created_keys_per_principal: 0,
    };
    let mut p = Vec::new();
    c.validate("kms", &mut p);
    assert_eq!(p.len(), 5, "{p:?}");
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn dropped_or_added_versions_fail_the_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    kms.create_key("a").unwrap();
    kms.create_key("b").unwrap();
    kms.rotate_key("a").unwrap();
    let good = std::fs::read_to_string(&path).unwrap();
    type Tamper = fn(&mut serde_json::Value);
    let tamperings: [(&str, Tamper); 2] = [
        // e.g. to force records back onto an older KEK version
        ("drop version 2 of `a`", |v| {
            v["keys"]["a"]["versions"].as_array_mut().unwrap().pop();
        }),
        ("drop key `b`", |v| {
            v["keys"].as_object_mut().unwrap().remove("b");
        }),
    ];
    for (what, tamper) in tamperings {
        std::fs::write(&path, &good).unwrap();
        edit_json(&path, tamper);
        let err = LocalKms::open_with_master_key(&path, master(), false).unwrap_err();
        assert!(
            format!("{err:#}").contains("integrity check failed"),
            "{what}: {err:#}"
        );
    }
    // Stripping the MAC does not help either.
    std::fs::write(&path, &good).unwrap();
    edit_json(&path, |v| {
        v.as_object_mut().unwrap().remove("mac");
    });
    assert!(LocalKms::open_with_master_key(&path, master(), false).is_err());
    std::fs::write(&path, &good).unwrap();
    LocalKms::open_with_master_key(&path, master(), false).unwrap();
}

#[tokio::test]
async fn a_rolled_back_file_is_refused_by_a_running_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    kms.create_key("a").unwrap();
    let old = std::fs::read(&path).unwrap();
    kms.rotate_key("a").unwrap();
    // An old, validly signed copy is put back: the running instance notices.
    std::fs::write(&path, &old).unwrap();
    let err = kms.reload().unwrap_err();
    assert!(format!("{err:#}").contains("rolled back"), "{err:#}");
    // The keys loaded before stay usable.
    assert_eq!(kms.key_info("a").await.unwrap().latest_version, 2);
}

#[test]
fn legacy_v1_files_are_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    kms.create_key("a").unwrap();
    edit_json(&path, |v| {
        let o = v.as_object_mut().unwrap();
        o.remove("mac");
        o.remove("generation");
        o.insert("format".into(), LEGACY_FORMAT.into());
    });
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    assert_eq!(kms.list_keys().len(), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(FILE_FORMAT) && text.contains("\"mac\""),
        "{text}"
    );
}

#[test]
fn symlinks_are_never_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    // A link planted where the old code put its predictable temporary file.
    let old_tmp = dir
        .path()
        .join(format!(".keys.json.tmp{}", std::process::id()));
    symlink(&victim, &old_tmp).unwrap();
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    kms.create_key("a").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    // A key file that is a link is refused with a clear error.
    let linked = dir.path().join("linked.json");
    symlink(&path, &linked).unwrap();
    let err = LocalKms::open_with_master_key(&linked, master(), false).unwrap_err();
    assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn concurrent_writers_with_separate_handles_lose_no_key() {
    // Two instances open the file independently (as the CLI and a proxy do): only the file
    // lock serialises them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
                for i in 0..15 {
                    kms.create_key(&format!("w{w}-k{i}")).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    assert_eq!(kms.list_keys().len(), 60);
}

#[tokio::test]
async fn auto_creation_stops_at_the_configured_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let mut kms = LocalKms::open_with_master_key(&path, master(), true).unwrap();
    kms.max_auto_created = 3;
    for i in 0..3 {
        kms.generate_data_key(&format!("t{i}")).await.unwrap();
    }
    let err = kms.generate_data_key("t3").await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::UnknownKey);
    assert!(err.message.contains("max_auto_created_keys"), "{err:?}");
    // The CLI path is not limited.
    assert!(kms.create_key("t3").unwrap());
}

#[tokio::test]
async fn one_principal_cannot_use_up_auto_creation() {
    use crate::kms::requester;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let mut kms = LocalKms::open_with_master_key(&path, master(), true).unwrap();
    kms.max_auto_created = 100;
    kms.max_auto_created_per_principal = 3;
    let anon = requester::label(None);
    for i in 0..3 {
        requester::scope(anon.clone(), kms.generate_data_key(&format!("a{i}")))
            .await
            .unwrap();
    }
    let err = requester::scope(anon.clone(), kms.generate_data_key("a3"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::UnknownKey);
    assert!(
        err.message.contains("max_auto_created_keys_per_principal"),
        "{err:?}"
    );
    // Keys that exist are still served to the same requester.
    requester::scope(anon, kms.generate_data_key("a0"))
        .await
        .unwrap();
    // Another principal has its own budget.
    let bob = requester::label(Some(&crate::principal::Principal::new(
        "bob",
        crate::principal::AuthMechanism::SaslPlain,
    )));
    requester::scope(bob, kms.generate_data_key("b0"))
        .await
        .unwrap();
    assert_eq!(kms.list_keys().len(), 4);
}

/// Regression: auto-creating several keys at once (five tenants' first records) made a thread
/// whose reload had read the file before another thread's write apply that older snapshot
/// after the other thread's reload, and fail with "key file ... was rolled back".
#[test]
fn concurrent_auto_creation_is_not_mistaken_for_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let kms = std::sync::Arc::new(LocalKms::open_with_master_key(&path, master(), true).unwrap());
    for round in 0..20 {
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let kms = kms.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(kms.generate_data_key(&format!("tenant-{round}-{t}")))
                        .map(|dk| dk.kek_version)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(1));
        }
    }
    let fresh = LocalKms::open_with_master_key(&path, master(), false).unwrap();
    assert!(fresh.reload().is_ok());
    assert_eq!(fresh.keys.lock().len(), 120);
}
