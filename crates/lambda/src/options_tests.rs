//! Unit tests for option building: defaults, precedence, authentication choice, redaction.
//! No network: `mongodb://` strings parse without DNS, and no client is created here.

use super::*;

fn env(vars: &[(&str, &str)]) -> LambdaEnv {
    LambdaEnv::from_vars(vars.iter().copied())
}

/// A Lambda environment: runtime variables and the execution role's credentials.
fn lambda_env(extra: &[(&str, &str)]) -> LambdaEnv {
    let mut vars = vec![
        ("AWS_LAMBDA_FUNCTION_NAME", "orders-fn"),
        ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE"),
    ];
    vars.extend_from_slice(extra);
    env(&vars)
}

async fn resolve(options: LambdaOptions, env: &LambdaEnv) -> Resolved {
    options.resolve(env).await.expect("options resolve")
}

#[tokio::test]
async fn serverless_defaults_apply_when_nothing_is_set() {
    let r = resolve(
        LambdaOptions::default().uri("mongodb://gw.internal:27018/app"),
        &env(&[]),
    )
    .await;
    let o = &r.client_options;
    assert_eq!(o.max_pool_size, Some(DEFAULT_MAX_POOL_SIZE));
    assert_eq!(o.min_pool_size, Some(0));
    assert_eq!(o.server_selection_timeout, Some(Duration::from_secs(5)));
    assert_eq!(o.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
    assert_eq!(o.max_idle_time, Some(DEFAULT_MAX_IDLE_TIME));
    assert_eq!(o.server_monitoring_mode, Some(ServerMonitoringMode::Poll));
    assert_eq!(o.retry_writes, Some(true));
    assert_eq!(o.retry_reads, Some(true));
    assert_eq!(o.app_name.as_deref(), Some(DEFAULT_APP_NAME));
    assert_eq!(o.default_database.as_deref(), Some("app"));
    assert_eq!(r.auth, AuthKind::None);
    assert_eq!(r.uri_origin, "LambdaOptions::uri");
}

#[tokio::test]
async fn the_uri_wins_over_defaults_and_the_builder_wins_over_the_uri() {
    let uri = "mongodb://gw:27018/?maxPoolSize=7&minPoolSize=1&serverSelectionTimeoutMS=1500\
               &connectTimeoutMS=900&maxIdleTimeMS=30000&retryWrites=false&retryReads=false\
               &appName=from-uri&serverMonitoringMode=stream";
    let r = resolve(LambdaOptions::default().uri(uri), &lambda_env(&[])).await;
    let o = &r.client_options;
    assert_eq!(o.max_pool_size, Some(7));
    assert_eq!(o.min_pool_size, Some(1));
    assert_eq!(
        o.server_selection_timeout,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(o.connect_timeout, Some(Duration::from_millis(900)));
    assert_eq!(o.max_idle_time, Some(Duration::from_secs(30)));
    assert_eq!(o.retry_writes, Some(false));
    assert_eq!(o.retry_reads, Some(false));
    assert_eq!(o.app_name.as_deref(), Some("from-uri"));
    assert_eq!(o.server_monitoring_mode, Some(ServerMonitoringMode::Stream));

    let r = resolve(
        LambdaOptions::default()
            .uri(uri)
            .max_pool_size(1)
            .min_pool_size(0)
            .server_selection_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .max_idle_time(Duration::from_secs(10))
            .retry_writes(true)
            .retry_reads(true)
            .app_name("explicit")
            .server_monitoring_mode(ServerMonitoringMode::Poll),
        &lambda_env(&[]),
    )
    .await;
    let o = &r.client_options;
    assert_eq!(o.max_pool_size, Some(1));
    assert_eq!(o.min_pool_size, Some(0));
    assert_eq!(o.server_selection_timeout, Some(Duration::from_secs(2)));
    assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
    assert_eq!(o.max_idle_time, Some(Duration::from_secs(10)));
    assert_eq!(o.retry_writes, Some(true));
    assert_eq!(o.retry_reads, Some(true));
    assert_eq!(o.app_name.as_deref(), Some("explicit"));
    assert_eq!(o.server_monitoring_mode, Some(ServerMonitoringMode::Poll));
}

#[tokio::test]
async fn connection_logging_is_on_unless_turned_off() {
    let on = resolve(LambdaOptions::default().uri("mongodb://gw/"), &env(&[])).await;
    assert!(on.client_options.cmap_event_handler.is_some());
    let off = resolve(
        LambdaOptions::default()
            .uri("mongodb://gw/")
            .log_connections(false),
        &env(&[]),
    )
    .await;
    assert!(off.client_options.cmap_event_handler.is_none());
}

#[tokio::test]
async fn customize_runs_last() {
    let r = resolve(
        LambdaOptions::default()
            .uri("mongodb://gw/")
            .max_pool_size(1)
            .customize(|o| {
                o.max_pool_size = Some(3);
                o.heartbeat_freq = Some(Duration::from_secs(30));
            }),
        &env(&[]),
    )
    .await;
    assert_eq!(r.client_options.max_pool_size, Some(3));
    assert_eq!(
        r.client_options.heartbeat_freq,
        Some(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn app_name_comes_from_the_function_name_and_fits_the_handshake() {
    let r = resolve(
        LambdaOptions::default().uri("mongodb://gw/"),
        &lambda_env(&[]),
    )
    .await;
    assert_eq!(r.client_options.app_name.as_deref(), Some("orders-fn"));

    let long = "é".repeat(100); // 200 bytes
    let r = resolve(
        LambdaOptions::default().uri("mongodb://gw/").app_name(long),
        &env(&[]),
    )
    .await;
    let name = r.client_options.app_name.unwrap();
    assert!(name.len() <= 128 && name.len() >= 127, "{}", name.len());
    assert!(name.chars().all(|c| c == 'é'));
}

#[tokio::test]
async fn pool_follows_managed_instance_concurrency_within_bounds() {
    for (conc, want) in [
        ("1", 2),
        ("4", 4),
        ("64", MAX_CONCURRENCY_POOL_CAP),
        ("junk", 2),
    ] {
        let r = resolve(
            LambdaOptions::default().uri("mongodb://gw/"),
            &lambda_env(&[("AWS_LAMBDA_MAX_CONCURRENCY", conc)]),
        )
        .await;
        assert_eq!(
            r.client_options.max_pool_size,
            Some(want),
            "concurrency {conc}"
        );
    }
}

#[tokio::test]
async fn uri_comes_from_mongomux_uri_then_mongodb_uri() {
    let both = env(&[
        ("MONGOMUX_URI", "mongodb://first:27018/"),
        ("MONGODB_URI", "mongodb://second:27018/"),
    ]);
    let r = resolve(LambdaOptions::default(), &both).await;
    assert_eq!(r.uri_origin, "MONGOMUX_URI");
    assert_eq!(r.client_options.hosts[0].to_string(), "first:27018");

    let r = resolve(
        LambdaOptions::default(),
        &env(&[("MONGODB_URI", "mongodb://second:27018/")]),
    )
    .await;
    assert_eq!(r.uri_origin, "MONGODB_URI");

    let r = resolve(LambdaOptions::default().uri("mongodb://third/"), &both).await;
    assert_eq!(r.uri_origin, "LambdaOptions::uri");

    let err = LambdaOptions::default()
        .resolve(&env(&[("MONGODB_URI", "")]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoUri), "{err}");
}

#[tokio::test]
async fn a_password_in_the_uri_means_password_auth_even_on_lambda() {
    let r = resolve(
        LambdaOptions::default().uri("mongodb://fn:pw@gw/?authSource=admin"),
        &lambda_env(&[]),
    )
    .await;
    assert_eq!(r.auth, AuthKind::Password);
    let c = r.client_options.credential.as_ref().unwrap();
    assert_eq!(c.username.as_deref(), Some("fn"));
    assert_eq!(c.source.as_deref(), Some("admin"));
}

/// The connection-string form `deploy/template.yaml` gives the functions behind its NLB keeps
/// every kit default, and the driver accepts the result (it checks the load-balanced rules,
/// one host and no replica set, when a client is created).
#[tokio::test]
async fn the_load_balanced_form_keeps_the_kit_defaults() {
    let forms = [
        (
            "mongodb://nlb.internal:27018/app?loadBalanced=true",
            AuthKind::None,
        ),
        (
            "mongodb://fn:pw@nlb.internal:27018/app?authSource=admin&loadBalanced=true",
            AuthKind::Password,
        ),
    ];
    for (uri, auth) in forms {
        let r = resolve(LambdaOptions::default().uri(uri), &env(&[])).await;
        let o = &r.client_options;
        assert_eq!(o.load_balanced, Some(true), "{uri}");
        assert_eq!(o.max_pool_size, Some(DEFAULT_MAX_POOL_SIZE), "{uri}");
        assert_eq!(o.min_pool_size, Some(DEFAULT_MIN_POOL_SIZE), "{uri}");
        assert_eq!(o.max_idle_time, Some(DEFAULT_MAX_IDLE_TIME), "{uri}");
        assert_eq!(o.default_database.as_deref(), Some("app"), "{uri}");
        assert_eq!(r.auth, auth, "{uri}");
        mongodb::Client::with_options(r.client_options).expect("the driver accepts the options");
    }
}

#[tokio::test]
async fn no_credentials_and_no_aws_environment_means_no_auth() {
    let r = resolve(LambdaOptions::default().uri("mongodb://gw/"), &env(&[])).await;
    assert_eq!(r.auth, AuthKind::None);
    assert!(r.client_options.credential.is_none());
}

#[tokio::test]
async fn auth_mode_from_the_environment() {
    let r = resolve(
        LambdaOptions::default().uri("mongodb://gw/"),
        &lambda_env(&[("MONGOMUX_AUTH", "uri")]),
    )
    .await;
    assert_eq!(r.auth, AuthKind::None);

    let err = LambdaOptions::default()
        .uri("mongodb://gw/")
        .resolve(&env(&[("MONGOMUX_AUTH", "kerberos")]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidAuthMode(ref v) if v == "kerberos"),
        "{err}"
    );

    // The builder's choice wins over the variable.
    let r = resolve(
        LambdaOptions::default()
            .uri("mongodb://gw/")
            .auth(Auth::Uri),
        &lambda_env(&[("MONGOMUX_AUTH", "iam")]),
    )
    .await;
    assert_eq!(r.auth, AuthKind::None);
}

#[cfg(feature = "aws-auth")]
mod iam {
    use super::*;
    use mongodb::options::AuthMechanism;

    fn assert_iam(r: &Resolved) {
        assert_eq!(r.auth, AuthKind::Iam);
        let c = r.client_options.credential.as_ref().expect("a credential");
        assert_eq!(c.mechanism, Some(AuthMechanism::MongoDbAws));
        assert_eq!(c.source.as_deref(), Some("$external"));
        assert!(c.username.is_none() && c.password.is_none());
    }

    #[tokio::test]
    async fn no_password_on_lambda_means_iam() {
        let r = resolve(
            LambdaOptions::default().uri("mongodb://gw:27018/app"),
            &lambda_env(&[]),
        )
        .await;
        assert_iam(&r);
        // The same in the load-balanced form the template uses.
        let r = resolve(
            LambdaOptions::default().uri("mongodb://gw:27018/app?loadBalanced=true"),
            &lambda_env(&[]),
        )
        .await;
        assert_iam(&r);
        assert_eq!(r.client_options.load_balanced, Some(true));
    }

    #[tokio::test]
    async fn explicit_iam_needs_no_aws_variables_at_build_time() {
        // The driver reads credentials when it authenticates, from the SDK's chain.
        let r = resolve(
            LambdaOptions::default()
                .uri("mongodb://gw/")
                .auth(Auth::Iam),
            &env(&[]),
        )
        .await;
        assert_iam(&r);
        let r = resolve(
            LambdaOptions::default().uri("mongodb://gw/"),
            &env(&[("MONGOMUX_AUTH", "iam")]),
        )
        .await;
        assert_iam(&r);
    }

    #[tokio::test]
    async fn iam_in_the_uri_is_kept() {
        let r = resolve(
            LambdaOptions::default()
                .uri("mongodb://gw/?authMechanism=MONGODB-AWS&authSource=$external"),
            &env(&[]),
        )
        .await;
        assert_iam(&r);
    }

    #[tokio::test]
    async fn explicit_iam_refuses_a_user_in_the_uri() {
        let err = LambdaOptions::default()
            .uri("mongodb://fn:pw@gw/")
            .auth(Auth::Iam)
            .resolve(&env(&[]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::IamWithUriCredentials), "{err}");
        assert!(!err.to_string().contains("pw@"));
    }
}

#[cfg(not(feature = "aws-auth"))]
#[tokio::test]
async fn without_aws_auth_iam_is_refused_and_auto_does_not_pick_it() {
    let err = LambdaOptions::default()
        .uri("mongodb://gw/")
        .auth(Auth::Iam)
        .resolve(&env(&[]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IamUnavailable), "{err}");
    let r = resolve(
        LambdaOptions::default().uri("mongodb://gw/"),
        &lambda_env(&[]),
    )
    .await;
    assert_eq!(r.auth, AuthKind::None);
}

#[tokio::test]
async fn errors_and_debug_output_never_show_the_password() {
    let secret = "Sup3r-S3cret";
    // An invalid option makes the driver's parser fail after it has seen the password.
    let uri = format!("mongodb://fn:{secret}@gw/?maxPoolSize=banana");
    let err = LambdaOptions::default()
        .uri(uri.clone())
        .resolve(&env(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidUri {
                origin: "LambdaOptions::uri",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains(secret), "{err}");
    assert!(!format!("{err:?}").contains(secret));

    let options = LambdaOptions::default().uri(uri.clone());
    assert!(!format!("{options:?}").contains(secret));
    assert!(format!("{options:?}").contains("fn:***@gw"));
    let e = env(&[("MONGODB_URI", uri.as_str())]);
    assert!(!format!("{e:?}").contains(secret));

    let r = resolve(
        LambdaOptions::default().uri(format!("mongodb://fn:{secret}@gw/")),
        &env(&[]),
    )
    .await;
    assert!(!format!("{:?}", r.client_options).contains(secret));
}

#[test]
fn env_ignores_variables_the_kit_does_not_use() {
    let e = env(&[("HOME", "/root"), ("AWS_SECRET_ACCESS_KEY", "x")]);
    assert!(e.vars.is_empty());
}
