"""tools/generate_descriptions.py: failures never cost the output file or
the work already done."""
import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mmseg_ovss.freecp.descriptions import load_descriptions
from mmseg_ovss.testing.tools import load_tool, run_tool
from mmseg_ovss.utils.errors import OVSSConfigError, OVSSDataError

OLD = {'cat': ['An old sentence about a cat.'],
       'dog': ['An old sentence about a dog.'],
       'yak': ['An old sentence about a yak.']}


class _Handler(BaseHTTPRequestHandler):
    """OpenAI-compatible chat endpoint; a prompt naming a word of
    ``server.html`` gets an HTML error page (status 200)."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        prompt = body['messages'][-1]['content']
        self.server.prompts.append(prompt)
        if any(word in prompt for word in self.server.html):
            reply = '<html><body>502 Bad Gateway</body></html>'
        else:
            reply = json.dumps({'choices': [{'message': {
                'content': 'A new sentence about its looks.'}}]})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    server = HTTPServer(('127.0.0.1', 0), _Handler)
    server.prompts, server.html = [], set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.api = ['--api-base', f'http://127.0.0.1:{server.server_port}/v1']
    yield server
    server.shutdown()
    server.server_close()


def dead_endpoint():
    """A local port nothing listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return ['--api-base', f'http://127.0.0.1:{port}/v1']


def class_file(tmp_path, *lines):
    path = tmp_path / 'classes.txt'
    path.write_text(''.join(f'{line}\n' for line in lines))
    return path


def test_unreachable_endpoint_keeps_the_output_and_fails(tmp_path):
    names = class_file(tmp_path, 'cat', 'dog')
    out = tmp_path / 'desc.json'
    with pytest.warns(UserWarning, match="LLM request for 'cat' failed"):
        with pytest.raises(OVSSDataError, match='no description could be '
                           r'generated.*was not written'):
            run_tool('generate_descriptions', [names, out, *dead_endpoint(),
                                               '--answers', 1])
    assert not out.exists()
    out.write_text(json.dumps(OLD))
    before = out.read_bytes()
    with pytest.warns(UserWarning, match='earlier entries'):
        with pytest.raises(OVSSDataError, match=r'desc.json is unchanged'):
            run_tool('generate_descriptions', [names, out, *dead_endpoint(),
                                               '--answers', 1, '--overwrite'])
    assert out.read_bytes() == before


def test_existing_output_needs_resume_or_overwrite(tmp_path, server):
    names = class_file(tmp_path, 'cat')
    out = tmp_path / 'desc.json'
    out.write_text(json.dumps(OLD))
    before = out.read_bytes()
    with pytest.raises(OVSSConfigError, match=r'already exists.*--resume.*'
                       '--overwrite'):
        run_tool('generate_descriptions', [names, out, *server.api])
    with pytest.raises(SystemExit):  # argparse: not both
        run_tool('generate_descriptions', [names, out, *server.api,
                                           '--resume', '--overwrite'])
    (tmp_path / 'broken.json').write_text('{"cat": ')
    with pytest.raises(OVSSDataError, match='broken.json exists but is not '
                       'a description file'):
        run_tool('generate_descriptions', [names, tmp_path / 'broken.json',
                                           *server.api, '--overwrite'])
    assert out.read_bytes() == before and server.prompts == []
    assert (tmp_path / 'broken.json').read_text() == '{"cat": '


def test_bad_reply_is_a_warning_for_that_class_only(tmp_path, server):
    names = class_file(tmp_path, 'cat', 'bird', 'dog')
    out = tmp_path / 'desc.json'
    server.html = {'bird'}
    with pytest.warns(UserWarning, match="'bird' failed.*not JSON.*"
                      '502 Bad Gateway'):
        table = run_tool('generate_descriptions', [names, out, *server.api,
                                                   '--answers', 1])
    assert list(table) == ['cat', 'dog']
    assert load_descriptions(out) == table
    # --resume asks only for the class that failed
    server.html, server.prompts = set(), []
    table = run_tool('generate_descriptions', [names, out, *server.api,
                                               '--answers', 1, '--resume'])
    assert len(server.prompts) == 3 and all('bird' in p
                                            for p in server.prompts)
    assert list(table) == ['cat', 'dog', 'bird']
    assert load_descriptions(out) == table


def test_a_crash_keeps_the_classes_already_described(tmp_path, monkeypatch):
    tool = load_tool('generate_descriptions')

    def generator(*args, **kwargs):
        def generate(prompt, num):
            if 'dog' in prompt:
                raise RuntimeError('the model ran out of memory')
            return ['A plausible sentence about it.'] * num
        return generate

    monkeypatch.setattr(tool, 'openai_generator', generator)
    names = class_file(tmp_path, 'cat', 'yak', 'dog', 'bird')
    out = tmp_path / 'desc.json'
    with pytest.raises(RuntimeError, match='out of memory'):
        run_tool('generate_descriptions', [names, out, '--api-base', 'x',
                                           '--answers', 1])
    assert list(load_descriptions(out)) == ['cat', 'yak']
    # no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ['classes.txt',
                                                          'desc.json']


def test_resume_and_overwrite_match_names_as_the_head(tmp_path, server):
    names = class_file(tmp_path, 'chest of drawers', 'cat')
    out = tmp_path / 'desc.json'
    out.write_text(json.dumps({'Chest-of-Drawers': ['An old chest.'],
                               'cat': []}))
    table = run_tool('generate_descriptions', [names, out, *server.api,
                                               '--answers', 1, '--resume'])
    # the chest is described already; the empty 'cat' entry is refilled
    assert len(server.prompts) == 3
    assert not any('chest' in p for p in server.prompts)
    assert table == {'Chest-of-Drawers': ['An old chest.'],
                     'cat': ['A new sentence about its looks.'] * 3}
    assert load_descriptions(out) == table
    table = run_tool('generate_descriptions', [names, out, *server.api,
                                               '--answers', 1, '--overwrite'])
    # one entry per class, under the class file's spelling
    assert list(table) == ['chest of drawers', 'cat']
    assert table['chest of drawers'] == ['A new sentence about its looks.'] * 3
    assert load_descriptions(out) == table


def test_overwrite_never_drops_an_entry(tmp_path, server):
    names = class_file(tmp_path, 'cat', 'dog')
    out = tmp_path / 'desc.json'
    out.write_text(json.dumps(OLD))
    server.html = {'dog'}
    with pytest.warns(UserWarning, match=r"'dog' failed.*earlier entries "
                      r"\['dog'\] are kept"):
        table = run_tool('generate_descriptions', [names, out, *server.api,
                                                   '--answers', 1,
                                                   '--overwrite'])
    assert list(table) == ['cat', 'dog', 'yak']
    assert table['cat'] == ['A new sentence about its looks.'] * 3
    assert table['dog'] == OLD['dog'] and table['yak'] == OLD['yak']
    assert load_descriptions(out) == table


def test_an_entry_of_this_run_is_never_replaced(tmp_path, server):
    # "bed" is a synonym of two lines (allowed in class files)
    names = class_file(tmp_path, 'bed', 'bunk, bed')
    out = tmp_path / 'desc.json'
    out.write_text(json.dumps({'bed': ['An old bed.'],
                               'bunk': ['An old bunk.']}))
    with pytest.warns(UserWarning, match="'bunk' shares a synonym with the "
                      "entry 'bed'"):
        table = run_tool('generate_descriptions', [names, out, *server.api,
                                                   '--answers', 1,
                                                   '--overwrite'])
    assert len(server.prompts) == 3
    assert table == {'bed': ['A new sentence about its looks.'] * 3,
                     'bunk': ['An old bunk.']}
    assert load_descriptions(out) == table


@pytest.mark.parametrize('option, value', [
    ('--answers', 0), ('--answers', -2), ('--max-tokens', 0),
    ('--temperature', math.nan), ('--temperature', -0.5),
    ('--temperature', math.inf)])
def test_numeric_options_are_checked(tmp_path, option, value):
    names = class_file(tmp_path, 'cat')
    out = tmp_path / 'desc.json'
    with pytest.raises(OVSSConfigError, match=f'{option} {value}'):
        run_tool('generate_descriptions', [names, out, *dead_endpoint(),
                                           option, value])
    assert not out.exists()


def test_sampling_a_local_model_needs_a_positive_temperature(tmp_path):
    with pytest.raises(OVSSConfigError, match=r'--temperature 0.0.*> 0'):
        run_tool('generate_descriptions', [
            class_file(tmp_path, 'cat'), tmp_path / 'desc.json',
            '--hf-model', tmp_path, '--temperature', 0])


@pytest.mark.parametrize('reply, problem', [
    ('<html>Bad Gateway</html>', 'is not JSON'),
    ('{"error": {"message": "model not loaded"}}',
     'no choices.*model not loaded'),
    ('{"choices": [{"text": "A cat."}]}', 'no message content'),
    ('{"choices": [{"message": {"content": null}}]}', 'no message content'),
])
def test_reply_answers_names_a_malformed_reply(reply, problem):
    reply_answers = load_tool('generate_descriptions').reply_answers
    with pytest.raises(ValueError, match=f'reply of http://h/v1.*{problem}'):
        reply_answers(reply, 'http://h/v1')
    assert reply_answers('{"choices": [{"message": {"content": "A b c."}}]}',
                         'u') == ['A b c.']
