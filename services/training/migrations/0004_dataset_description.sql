-- A dataset's description (renaming needs no schema change).
ALTER TABLE datasets ADD COLUMN description text NOT NULL DEFAULT '';
