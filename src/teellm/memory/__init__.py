"""Protected memory: memfd_secret, mlock, MADV_DONTDUMP, non-dumpable process."""
