-- `deliveries` filled to 40% instead of 50% (issue 22). A claimed version is 24 B longer
-- than the row it replaces (its token and lease), so at 50 a page of rows could not hold
-- all their claimed versions: 88-91% of claims were HOT, and each of the others wrote a
-- new version on another page with an entry in every index. At 40, 100% were, and the
-- heap was no larger (59 MB against 60 MB for 100,000 rows through a lifecycle, 47 MB at
-- the default 100: docs/benchmarks.md). Pages written before keep what they have.
-- SHARE UPDATE EXCLUSIVE on `deliveries`, catalog only: writes go on.
ALTER TABLE dispatcher.deliveries SET (fillfactor = 40);
