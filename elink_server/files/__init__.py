"""The file service: files and folders on the heavy bus (docs/protocol.md §9,
docs/files.md), stored on local disk or in HDFS."""
