"""AMD SEV-SNP: report layout (abi), certificate table (certs), verification (verify)."""
