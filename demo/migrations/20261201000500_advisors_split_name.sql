-- The second release of the demo app splits an advisor's name in two (struct Advisor, shape 2).
-- Versions written before keep their `name` as they were written; the app reads them as AdvisorV1
-- and converts them (#[immu(upcast = AdvisorV1)]). New columns are nullable: they are NULL in
-- those versions.
ALTER TABLE "advisors"
    ADD COLUMN "first_name" text,
    ADD COLUMN "last_name"  text,
    ALTER COLUMN "name" DROP NOT NULL;
-- Brings the projection "advisors_current" and immu's machinery in step with the new columns.
SELECT immu.sync_versioning('"advisors"');
