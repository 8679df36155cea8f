-- 0007 on PostgreSQL: as sql/0007_display_names.sql (the display name the backend sets
-- through the server API, shown when a token carries no name).

ALTER TABLE users ADD COLUMN display_name TEXT;
