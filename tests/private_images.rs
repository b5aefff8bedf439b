//! Private images (issue 12) through the whole agent against the test API
//! server and real `kubectl`: a registry with basic auth started by the test
//! (127.0.0.1:5151), pods pulling from it without a secret (ErrImagePull, then
//! ImagePullBackOff, upstream's event), with a pod pull secret, with their
//! ServiceAccount's pull secret (copied by the ServiceAccount admission), with
//! a missing and a malformed secret, and through a credential provider plugin
//! (images named `localhost:5151/...` match it, `127.0.0.1:5151/...` do not).

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::*;
use common::registry::{credential_plugin, plugin_runs, provider_config, Registry};
use common::*;
use serde_json::Value;

fn events(admin: &Path) -> Vec<Value> {
    kubectl_json(admin, &["get", "events", "-n", "default"]).and_then(|v| v["items"].as_array().cloned()).unwrap_or_default()
}

fn has_event(evs: &[Value], pod: &str, reason: &str, message: &str) -> bool {
    evs.iter().any(|e| e["involvedObject"]["name"] == pod && e["reason"] == reason && e["message"] == message)
}

fn pod(name: &str, image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - {{name: c, image: \"{image}\", imagePullPolicy: Always, command: [sleep, \"3600\"]}}\n"
    )
}

fn waiting(admin: &Path, name: &str) -> Option<(String, String)> {
    let p = pod_phase(admin, name)?;
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    Some((w["reason"].as_str()?.to_owned(), w["message"].as_str().unwrap_or("").to_owned()))
}

fn running(admin: &Path, name: &str) -> bool {
    pod_phase(admin, name).is_some_and(|p| p["status"]["phase"] == "Running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_pull_secrets_service_accounts_and_credential_providers_reach_a_private_registry() {
    let reg = tokio::task::block_in_place(|| {
        let reg = Registry::start("p1", 5151, Some(("alice", "s3cret")));
        for tag in ["none", "secret", "sa", "bad", "plugin1", "plugin2"] {
            reg.push(&format!("test/private:{tag}"));
        }
        reg
    });
    let api = api_server(Path::new("/var/lib/rkubelet-test/agents/p1-api")).await;
    let work = Path::new("/var/lib/rkubelet-test/agents/p1-work");
    let _ = std::fs::remove_dir_all(work);
    let bin = work.join("bin");
    credential_plugin(&bin, "test-provider", "localhost:5151", ("alice", "s3cret"), ("Registry", "5m"), "0");
    let config = work.join("providers.yaml");
    provider_config(&config, "test-provider", &["localhost:5151"]);
    let node_kc = api.node.to_str().unwrap().to_string();
    let flags = [
        "--kubeconfig",
        &node_kc,
        "--image-credential-provider-config",
        config.to_str().unwrap(),
        "--image-credential-provider-bin-dir",
        bin.to_str().unwrap(),
        "--registry-config-path",
        "",
    ];
    let agent = tokio::task::block_in_place(|| Agent::with_options("p1", &[], &flags));
    let _cleanup = DeletePods(api.admin.clone());
    let admin = api.admin.clone();
    let r = reg.addr.clone();
    tokio::task::block_in_place(|| {
        // kubectl's own secret generators (the test server speaks no protobuf: generated
        // client-side, created from the file).
        let secret = |name: &str, args: &[&str]| {
            let mut a = vec!["create", "secret"];
            a.extend_from_slice(args);
            a.extend(["--dry-run=client", "-o", "yaml"]);
            let (ok, yaml) = kubectl(&admin, &[&a[..2], &[args[0], name][..], &a[3..]].concat());
            assert!(ok, "{yaml}");
            create(&admin, &agent.root, &format!("{name}.yaml"), &yaml);
        };
        secret("regcred", &["docker-registry", &format!("--docker-server={r}"), "--docker-username=alice", "--docker-password=s3cret"]);
        // Valid JSON (the API server accepts it) that the kubelet's keyring cannot read.
        secret("broken", &["generic", "--type=kubernetes.io/dockerconfigjson", &format!("--from-literal=.dockerconfigjson={{\"auths\":{{\"{r}\":{{\"auth\":\"!!\"}}}}}}")]);
        create(&admin, &agent.root, "sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: puller, namespace: default}\nimagePullSecrets:\n- name: regcred\n");
        let pods = [
            ("none", pod("none", &format!("{r}/test/private:none"), "")),
            ("secret", pod("secret", &format!("{r}/test/private:secret"), "  imagePullSecrets: [{name: missing}, {name: regcred}]\n")),
            ("sa", pod("sa", &format!("{r}/test/private:sa"), "  serviceAccountName: puller\n")),
            ("bad", pod("bad", &format!("{r}/test/private:bad"), "  imagePullSecrets: [{name: broken}]\n")),
            ("plugin1", pod("plugin1", "localhost:5151/test/private:plugin1", "")),
            ("plugin2", pod("plugin2", "localhost:5151/test/private:plugin2", "")),
        ];
        for (name, yaml) in &pods {
            create(&admin, &agent.root, &format!("{name}.yaml"), yaml);
        }

        // The ServiceAccount admission gave the pod the account's secret.
        let sa = pod_phase(&admin, "sa").unwrap();
        assert_eq!(sa["spec"]["imagePullSecrets"], serde_json::json!([{"name": "regcred"}]));

        for name in ["secret", "sa", "plugin1", "plugin2"] {
            wait_for(Duration::from_secs(120), &format!("{name} Running"), &agent, || running(&admin, name).then_some(()));
        }
        // Both plugin pods pulled with the plugin's credentials; its Registry-keyed answer was cached.
        let runs = plugin_runs(&bin, "test-provider");
        assert_eq!(runs.len(), 1, "one plugin run for two pulls: {runs:?}");
        assert!(runs[0].2.contains("\"image\":\"localhost:5151/test/private\""), "{runs:?}");

        // No credential: ErrImagePull, then ImagePullBackOff, with upstream's messages.
        let image = format!("{r}/test/private:none");
        let cause = format!(
            "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": pulling from host {r} failed with status code [manifests none]: 401 Unauthorized"
        );
        let evs = wait_for(Duration::from_secs(60), "pull failure and back-off events", &agent, || {
            let evs = events(&admin);
            (has_event(&evs, "none", "Failed", &format!("Failed to pull image \"{image}\": {cause}"))
                && has_event(&evs, "none", "Failed", "Error: ErrImagePull")
                && has_event(&evs, "none", "BackOff", &format!("Back-off pulling image \"{image}\""))
                && has_event(&evs, "none", "Failed", "Error: ImagePullBackOff"))
            .then_some(evs)
        });
        let (reason, message) = wait_for(Duration::from_secs(30), "ImagePullBackOff", &agent, || waiting(&admin, "none").filter(|(r, _)| r == "ImagePullBackOff"));
        assert_eq!(reason, "ImagePullBackOff");
        assert_eq!(message, format!("Back-off pulling image \"{image}\": ErrImagePull: {cause}"));

        // A missing secret is reported and the pull goes on with the others.
        assert!(
            has_event(&evs, "secret", "FailedToRetrieveImagePullSecret", "Unable to retrieve some image pull secrets (missing); attempting to pull the image may not succeed."),
            "{evs:#?}"
        );
        // A secret that does not parse: no pull, its error as the waiting reason and event.
        let msg = "failed to parse image pull secret \"default/broken\" (.dockerconfigjson): error parsing username and password from docker config: unable to parse auth field, must be formatted as base64(username:password)";
        let (reason, message) = wait_for(Duration::from_secs(30), "bad secret waiting", &agent, || waiting(&admin, "bad").filter(|(r, _)| r.starts_with("failed to parse")));
        assert_eq!((reason.as_str(), message.as_str()), (msg, msg));
        assert!(has_event(&events(&admin), "bad", "Failed", &format!("Error: {msg}")));
        let pulled = |tag: &str| reg.log().lines().any(|l| l.contains(&format!("\"GET /v2/test/private/manifests/{tag} ")) && l.contains("rkubelet/"));
        assert!(pulled("secret"), "the access log shows the agent's pulls");
        assert!(!pulled("bad"), "no pull was attempted for the bad secret's pod");
    });
    assert_api_clean(&api.srv);
}

#[test]
fn p2_a_broken_credential_provider_configuration_stops_the_agent_at_start() {
    let dir = Path::new("/var/lib/rkubelet-test/agents/p2-work");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let config = dir.join("providers.yaml");
    provider_config(&config, "absent-plugin", &["localhost:5151"]);
    let out = std::process::Command::new(agent_binary())
        .args(["--root-dir", dir.join("state").to_str().unwrap(), "--image-credential-provider-config", config.to_str().unwrap(), "--image-credential-provider-bin-dir"])
        .arg(dir.join("bin"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&format!("plugin binary executable {} did not exist", dir.join("bin/absent-plugin").display())), "{stderr}");
    let out = std::process::Command::new(agent_binary())
        .args(["--root-dir", dir.join("state").to_str().unwrap(), "--serialize-image-pulls=true", "--max-parallel-image-pulls", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("cannot be larger than 1 unless SerializeImagePulls (--serialize-image-pulls) is set to false"), "{stderr}");
}
