"""Schedules as code: `pgsched apply FILE` and `pgsched export` (ADR 0031).

- `document`: a schedules file (YAML or TOML) read into schedule definitions, with its defaults,
  `${VAR}` interpolation and its digest; and the current schedules written back as such a file.
- `plan`: the changes that make the database hold what a file declares (create, update with a
  field diff, unchanged, delete), worked out and, unless it is a dry run, made in one
  transaction through app.services.schedules (the API's rules), each change one event by actor
  `apply` with the file's digest.

A file entry is the body of `POST /v1/schedules` (app.api.schemas.ScheduleCreate, checked by the
same struct), so the API's reference documents both.
"""
