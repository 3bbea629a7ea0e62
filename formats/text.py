"""Text files as editors save them: UTF-8 with or without a byte-order mark (Notepad writes one), or UTF-16 with its
mark; any other encoding is named with the line of its first byte that is not UTF-8 (vtab.py's split files, fgvc.py's
json)."""
import codecs

from formats import DataError


def read_text(path):
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode('utf-16')
        return raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b'\n') + 1
        raise DataError(f'{path}, line {line}: byte 0x{raw[e.start]:02x} is not {e.encoding[:6].upper()} (saved as '
                        f'Latin-1 or Windows-1252?); save the file as UTF-8') from None
