-- The test suite's accounts table wakes change feeds at commit (immu's notify option, off by
-- default): the feed's live tests and reliability scenario follow it.
SELECT immu.configure_versioning('accounts', notify => true);
