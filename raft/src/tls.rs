//! Mutual TLS on every gRPC connection of a cluster (rustls through tonic): a node's
//! server accepts only clients that present a certificate signed by the cluster's CA
//! (rustls' `WebPkiClientVerifier`), and every client, a peer node or a gateway, verifies
//! the server against the same CA and presents its own certificate. Without a
//! [`TlsConfig`] a node and a client speak plaintext HTTP/2, as before.
//!
//! [`write_dev_ca`] makes a throwaway CA and certificates for development and tests
//! (`rcgen`, pure Rust).

use crate::error::LedgerError;
use crate::{RPC_CONNECT_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The cluster's CA certificate and this process's certificate chain and private key
/// (PEM), used for every gRPC server and channel of a node or client. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    ca: Certificate,
    identity: Identity,
}

/// The files [`write_dev_ca`] writes into its directory.
pub const DEV_CA_CERT: &str = "ca.pem";
/// A ledger node's certificate (server and client: nodes call each other) and key.
pub const DEV_LEDGER_CERT: &str = "ledger.pem";
pub const DEV_LEDGER_KEY: &str = "ledger-key.pem";
/// A gateway's (or `ledger-admin`'s) client certificate and key.
pub const DEV_CLIENT_CERT: &str = "client.pem";
pub const DEV_CLIENT_KEY: &str = "client-key.pem";

impl TlsConfig {
    /// Reads and checks the PEM files: `ca` (the cluster CA certificate), `cert` (this
    /// process's certificate chain, leaf first) and `key` (its private key).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConfig, LedgerError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| LedgerError::InvalidTls(format!("reading {}: {e}", path.display())))
        };
        let tls = TlsConfig {
            ca: Certificate::from_pem(read(ca)?),
            identity: Identity::from_pem(read(cert)?, read(key)?),
        };
        // tonic parses the PEM only when a server or a channel is configured: do it now,
        // so bad files fail at startup instead of on the first connection.
        server(Some(&tls))?;
        tls.endpoint("127.0.0.1:1")?;
        Ok(tls)
    }

    /// The server side: this node's identity, client certificates required and verified
    /// against the CA.
    fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// An endpoint for `addr` (`host:port`, the host being what the server's certificate
    /// names) over mutual TLS.
    fn endpoint(&self, addr: &str) -> Result<Endpoint, LedgerError> {
        Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|endpoint| endpoint.tls_config(self.client()))
            .map_err(|e| LedgerError::InvalidTls(format!("channel to {addr:?}: {e:?}")))
    }
}

impl fmt::Debug for TlsConfig {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// The server a node serves its gRPC port with: requiring mutual TLS with `tls`,
/// plaintext without.
pub(crate) fn server(tls: Option<&TlsConfig>) -> Result<Server, LedgerError> {
    match tls {
        Some(tls) => Server::builder()
            .tls_config(tls.server())
            .map_err(|e| LedgerError::InvalidTls(format!("server configuration: {e:?}"))),
        None => Ok(Server::builder()),
    }
}

/// The endpoint every channel of this crate (Raft between nodes, a client's calls) dials:
/// mutual TLS with `tls`, plaintext without; connecting takes at most
/// [`RPC_CONNECT_TIMEOUT`].
pub(crate) fn endpoint(addr: &str, tls: Option<&TlsConfig>) -> Result<Endpoint, LedgerError> {
    let endpoint = match tls {
        Some(tls) => tls.endpoint(addr)?,
        None => Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| LedgerError::Invalid(format!("bad ledger address {addr:?}: {e}")))?,
    };
    Ok(endpoint.connect_timeout(RPC_CONNECT_TIMEOUT))
}

/// Writes a new development CA into `dir`: [`DEV_CA_CERT`], a ledger node certificate
/// whose subject alternative names are `hosts` (IP addresses and DNS names the nodes are
/// dialed by), usable as server and client ([`DEV_LEDGER_CERT`], [`DEV_LEDGER_KEY`]), and
/// a client-only certificate for gateways and operators ([`DEV_CLIENT_CERT`],
/// [`DEV_CLIENT_KEY`]). Keys are written readable by the owner only. The CA's own key is
/// not kept: to issue more certificates, make a new CA. Not for production.
pub fn write_dev_ca(dir: &Path, hosts: &[String]) -> Result<(), LedgerError> {
    let failed = |what: &str, e: rcgen::Error| LedgerError::InvalidTls(format!("{what}: {e}"));
    if hosts.is_empty() {
        return Err(LedgerError::InvalidTls("the ledger certificate needs a host".into()));
    }
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "SolRouter dev CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| failed("CA", e))?;
    let issue = |sans: &[String], name: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
        let mut params = CertificateParams::new(sans.to_vec()).map_err(|e| failed(name, e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(|e| failed(name, e))?;
        let cert = params.signed_by(&key, &ca).map_err(|e| failed(name, e))?;
        Ok::<_, LedgerError>((cert.pem(), key.serialize_pem()))
    };
    let both = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let (ledger_cert, ledger_key) = issue(hosts, "solrouter-ledger", both)?;
    let client_only = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (client_cert, client_key) = issue(&[], "solrouter-client", client_only)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| LedgerError::InvalidTls(format!("creating {}: {e}", dir.display())))?;
    write_file(&dir.join(DEV_CA_CERT), &ca.pem(), 0o644)?;
    write_file(&dir.join(DEV_LEDGER_CERT), &ledger_cert, 0o644)?;
    write_file(&dir.join(DEV_LEDGER_KEY), &ledger_key, 0o600)?;
    write_file(&dir.join(DEV_CLIENT_CERT), &client_cert, 0o644)?;
    write_file(&dir.join(DEV_CLIENT_KEY), &client_key, 0o600)?;
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), LedgerError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| LedgerError::InvalidTls(format!("creating {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| LedgerError::InvalidTls(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    //! A node serving mutual TLS: a client holding a cluster certificate is served; one
    //! without a certificate, one with another CA's and one speaking plaintext can neither
    //! submit nor send a Raft RPC, and the ledger is unchanged by their attempts.

    use super::*;
    use crate::client::encode;
    use crate::grpc::ledger_service_client::LedgerServiceClient;
    use crate::grpc::raft_service_client::RaftServiceClient;
    use crate::grpc::{GroupRequest, RaftRequest};
    use crate::{
        ClusterConfig, ClusterStart, Consistency, LedgerApi, LedgerClient, LedgerNode, NodeOptions,
    };
    use solrouter_ledger::{AccountId, Command, Op, OpId, PicoUsd, Reply};
    use std::collections::BTreeMap;
    use tonic::transport::Channel;

    const TOP_UP: PicoUsd = PicoUsd(1_000);

    fn dev_ca(hosts: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let hosts: Vec<String> = hosts.iter().map(|host| (*host).to_owned()).collect();
        write_dev_ca(dir.path(), &hosts).unwrap();
        dir
    }

    fn tls(ca_dir: &Path, identity_dir: &Path, cert: &str, key: &str) -> TlsConfig {
        let ca = ca_dir.join(DEV_CA_CERT);
        TlsConfig::from_files(&ca, &identity_dir.join(cert), &identity_dir.join(key)).unwrap()
    }

    /// How a stranger dials the node: each fails the handshake (or speaks no TLS at all).
    /// The last one holds a member's certificate but trusts another CA.
    fn strangers(addr: &str, cluster: &Path, other: &Path) -> Vec<(&'static str, Channel)> {
        let ca = Certificate::from_pem(std::fs::read(cluster.join(DEV_CA_CERT)).unwrap());
        let no_certificate = ClientTlsConfig::new().ca_certificate(ca);
        let https = Endpoint::from_shared(format!("https://{addr}")).unwrap();
        let foreign = tls(cluster, other, DEV_CLIENT_CERT, DEV_CLIENT_KEY);
        // A member's certificate, but trusting another CA: the client itself refuses the
        // node's certificate (server authentication).
        let elsewhere = tls(other, cluster, DEV_CLIENT_CERT, DEV_CLIENT_KEY);
        vec![
            ("no certificate", https.tls_config(no_certificate).unwrap().connect_lazy()),
            ("another CA's certificate", foreign.endpoint(addr).unwrap().connect_lazy()),
            ("plaintext", endpoint(addr, None).unwrap().connect_lazy()),
            ("trusting another CA", elsewhere.endpoint(addr).unwrap().connect_lazy()),
        ]
    }

    /// The call failed in the connection (the handshake, or the server closing it after
    /// refusing the client's certificate: under TLS 1.3 a client learns that only on its
    /// first read), not with an answer of the service.
    fn assert_refused_by_transport(who: &str, status: &tonic::Status) {
        let source = std::error::Error::source(status);
        let transport = source.and_then(|e| e.downcast_ref::<tonic::transport::Error>());
        assert!(transport.is_some(), "{who}: not a transport error: {status:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_holders_of_a_cluster_certificate_reach_a_node() {
        let cluster = dev_ca(&["127.0.0.1", "localhost"]);
        let other = dev_ca(&["127.0.0.1", "localhost"]);
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let start = ClusterStart::Bootstrap(BTreeMap::from([(1, addr.to_string())]));
        let node_tls = tls(cluster.path(), cluster.path(), DEV_LEDGER_CERT, DEV_LEDGER_KEY);
        let config = ClusterConfig::try_new(1, addr, start, 1).unwrap().with_tls(node_tls);
        let data = tempfile::tempdir().unwrap();
        let node =
            LedgerNode::open_cluster(&config, data.path(), &NodeOptions::default()).await.unwrap();

        let member = tls(cluster.path(), cluster.path(), DEV_CLIENT_CERT, DEV_CLIENT_KEY);
        let seeds = [addr.to_string()];
        let client = LedgerClient::connect_with(&seeds, Some(member.clone())).await.unwrap();
        let account = AccountId(7);
        let create = Op::CreateAccount { account, name: "acme".into() };
        let created = client.submit(Command { id: OpId(1), op: create }).await.unwrap();
        assert_eq!(created, Ok(Reply::AccountCreated));
        let credits = || async {
            let account = client.account(account, Consistency::Linearizable).await.unwrap();
            account.unwrap().credits
        };
        let credit = vec![Command { id: OpId(2), op: Op::Credit { account, amount: TOP_UP } }];
        let submit = GroupRequest {
            group: 0,
            payload: encode(&credit).unwrap(),
            incarnation: Default::default(),
        };
        // Not a valid vote: a request that gets through TLS is refused by the service
        // (InvalidArgument), one that does not never reaches it.
        let vote = RaftRequest { group: 0, payload: b"not a vote".to_vec().into() };
        // Counted before proposing, unlike the log index in openraft's metrics, which may
        // still trail the create's reply.
        let proposed_before = node.stats().n_commands_proposed;

        for (who, channel) in strangers(&addr.to_string(), cluster.path(), other.path()) {
            let submitted = LedgerServiceClient::new(channel.clone()).submit(submit.clone()).await;
            assert_refused_by_transport(who, &submitted.expect_err(who));
            let voted = RaftServiceClient::new(channel).vote(vote.clone()).await;
            assert_refused_by_transport(who, &voted.expect_err(who));
        }
        assert_eq!(credits().await, PicoUsd(0), "no stranger's credit was applied");
        assert_eq!(node.stats().n_commands_proposed, proposed_before);

        // The same requests from a holder of a cluster certificate get through.
        let channel = member.endpoint(&addr.to_string()).unwrap().connect_lazy();
        LedgerServiceClient::new(channel.clone()).submit(submit).await.unwrap();
        assert_eq!(credits().await, TOP_UP);
        let status = RaftServiceClient::new(channel).vote(vote).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

        drop(client);
        node.shutdown().await.unwrap();
    }

    #[test]
    fn files_that_are_not_pem_are_refused_at_startup() {
        let cluster = dev_ca(&["127.0.0.1"]);
        let ca = cluster.path().join(DEV_CA_CERT);
        let cert = cluster.path().join(DEV_LEDGER_CERT);
        let key = cluster.path().join(DEV_LEDGER_KEY);
        assert!(TlsConfig::from_files(&ca, &cert, &key).is_ok());
        let swapped = TlsConfig::from_files(&ca, &key, &cert).unwrap_err();
        assert!(matches!(swapped, LedgerError::InvalidTls(_)), "{swapped}");
        let missing = TlsConfig::from_files(&ca, &cert, &cluster.path().join("absent.pem"));
        assert!(matches!(missing, Err(LedgerError::InvalidTls(_))));
    }
}
