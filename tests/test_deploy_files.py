"""Certificates, SuperNode keys, the flwr connection, node data and the token block cache."""

from __future__ import annotations

import tomllib

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from famflow.clients.node import get_node_data
from famflow.familial.data.block_cache import block_cache_file, cached_splits
from famflow.familial.data.config import DataConfig
from famflow.familial.data.splits import TokenSplits
from famflow.familial.errors import FamflowError
from famflow.federation.config import FederationConfig
from famflow.server.deployment.certificates import make_node_key, make_server_certificates
from famflow.server.deployment.connection import write_connection


def test_the_server_certificate_names_its_hosts_and_is_signed_by_the_ca(tmp_path):
    paths = make_server_certificates(tmp_path, ["127.0.0.1", "edge.local"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["edge.local"]
    ca.public_key().verify(  # raises when the CA did not sign it
        server.signature,
        server.tbs_certificate_bytes,
        padding.PKCS1v15(),
        server.signature_hash_algorithm,
    )
    assert paths.server_key.stat().st_mode & 0o777 == 0o600


def test_a_node_key_is_an_openssh_ecdsa_pair_on_a_nist_curve(tmp_path):
    key = make_node_key(tmp_path, "edge-1")
    private = load_ssh_private_key(key.private_key.read_bytes(), password=None)
    public = load_ssh_public_key(key.public_key.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    with pytest.raises(FamflowError, match="plain file name"):
        make_node_key(tmp_path, "../edge")


def test_the_connection_is_added_beside_the_others(tmp_path):
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[superlink]\ndefault = "local"\n[superlink.local]\naddress = ":local:"\n'
    )
    ca = make_server_certificates(tmp_path / "certs", ["127.0.0.1"]).ca_cert
    write_connection("edge", "127.0.0.1:9093", ca, config_file)
    write_connection("lab", "10.0.0.2:9093", None, config_file)
    superlink = tomllib.loads(config_file.read_text())["superlink"]
    assert superlink["default"] == "local" and superlink["local"] == {"address": ":local:"}
    assert superlink["edge"] == {"address": "127.0.0.1:9093", "root-certificates": str(ca)}
    assert superlink["lab"] == {"address": "10.0.0.2:9093", "insecure": True}
    with pytest.raises(FamflowError, match="No CA certificate"):
        write_connection("x", "h:1", tmp_path / "missing.crt", config_file)


def test_a_node_with_missing_data_is_told_which_key_to_fix(tmp_path):
    with pytest.raises(FamflowError, match="fix data= in the SuperNode's --node-config"):
        get_node_data(FederationConfig(), {"data": str(tmp_path / "nowhere.txt")})


def test_token_blocks_are_cached_and_rebuilt_when_the_corpus_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("FAMFLOW_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a" * 100)
    config = DataConfig(name=str(corpus), seq_len=8)
    built = []

    def build() -> TokenSplits:
        built.append(1)
        return TokenSplits(torch.arange(16).view(2, 8), torch.arange(8).view(1, 8))

    path = block_cache_file(config, 0, 64, "tiny")
    first = cached_splits(path, build)
    again = cached_splits(path, build)
    assert len(built) == 1 and torch.equal(first.train, again.train)
    assert block_cache_file(config, 1, 64, "tiny") != path
    path.write_bytes(b"corrupt")
    assert torch.equal(cached_splits(path, build).validation, first.validation)
    assert len(built) == 2
    corpus.write_text("b" * 101)
    assert block_cache_file(config, 0, 64, "tiny") != path
