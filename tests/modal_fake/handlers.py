"""The gRPC methods of the fake control plane (see server.py for the semantics kept) and its HTTP routes."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from .server import PARTITION_LIMIT, Call, FakeModal, Function
from .web import add_web_urls


def _fake(self: Any) -> FakeModal:
    return self.fake


async def _request(self: Any, stream: Any) -> tuple[FakeModal, Any]:
    message = await stream.recv_message()
    fake = _fake(self)
    fake.rpc_log.append(type(message).__name__)
    fake.container_for(stream.metadata)  # a killed container's calls are refused
    return fake, message


def _create(creation_type: int) -> bool:
    return creation_type in (api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                             api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP)


class Handlers:  # noqa: D101 (the queue, dict, volume and blob part)
    # --- client ----------------------------------------------------------------------------------
    async def ClientHello(self, stream) -> None:
        await _request(self, stream)
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AuthTokenGet(self, stream) -> None:
        await _request(self, stream)
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=""))

    # --- Queue -----------------------------------------------------------------------------------
    async def QueueGetOrCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        queue_id = fake.named_object("queue", req.deployment_name, _create(req.object_creation_type), fake.queues)
        await stream.send_message(api_pb2.QueueGetOrCreateResponse(queue_id=queue_id))

    async def QueuePut(self, stream) -> None:
        fake, req = await _request(self, stream)
        with fake.lock:
            partition = fake.queues[req.queue_id][req.partition_key.decode() if req.partition_key else ""]
            if len(partition) + len(req.values) > PARTITION_LIMIT:
                raise GRPCError(Status.RESOURCE_EXHAUSTED, f"Queue partition is full ({PARTITION_LIMIT} items)")
            partition.extend(req.values)
            fake.queue_changed.notify_all()
        await stream.send_message(empty_pb2.Empty())

    async def QueueGet(self, stream) -> None:
        fake, req = await _request(self, stream)
        key = req.partition_key.decode() if req.partition_key else ""
        deadline = time.monotonic() + max(0.0, req.timeout)
        while True:
            with fake.lock:
                partition = fake.queues[req.queue_id][key]
                values = [partition.popleft() for _ in range(min(req.n_values or 1, len(partition)))]
            if values or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        await stream.send_message(api_pb2.QueueGetResponse(values=values))

    async def QueueLen(self, stream) -> None:
        fake, req = await _request(self, stream)
        partitions = fake.queues[req.queue_id]
        key = req.partition_key.decode() if req.partition_key else ""
        size = sum(map(len, partitions.values())) if req.total else len(partitions[key])
        await stream.send_message(api_pb2.QueueLenResponse(len=size))

    async def QueueClear(self, stream) -> None:
        fake, req = await _request(self, stream)
        partitions = fake.queues[req.queue_id]
        if req.all_partitions:
            partitions.clear()
        else:
            partitions.pop(req.partition_key.decode() if req.partition_key else "", None)
        await stream.send_message(empty_pb2.Empty())

    # --- Dict ------------------------------------------------------------------------------------
    async def DictGetOrCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        dict_id = fake.named_object("dict", req.deployment_name, _create(req.object_creation_type), fake.dicts)
        await stream.send_message(api_pb2.DictGetOrCreateResponse(dict_id=dict_id))

    async def DictUpdate(self, stream) -> None:
        fake, req = await _request(self, stream)
        with fake.lock:
            data = fake.dicts[req.dict_id]
            created = True
            for entry in req.updates:
                if req.if_not_exists and entry.key in data:
                    created = False
                    continue
                data[entry.key] = entry.value
        await stream.send_message(api_pb2.DictUpdateResponse(created=created))

    async def DictGet(self, stream) -> None:
        fake, req = await _request(self, stream)
        data = fake.dicts[req.dict_id]
        found = req.key in data
        await stream.send_message(api_pb2.DictGetResponse(found=found, value=data.get(req.key, b"")))

    async def DictContains(self, stream) -> None:
        fake, req = await _request(self, stream)
        await stream.send_message(api_pb2.DictContainsResponse(found=req.key in fake.dicts[req.dict_id]))

    async def DictPop(self, stream) -> None:
        fake, req = await _request(self, stream)
        with fake.lock:
            data = fake.dicts[req.dict_id]
            found = req.key in data
            value = data.pop(req.key, b"")
        await stream.send_message(api_pb2.DictPopResponse(found=found, value=value))

    # --- Volume ----------------------------------------------------------------------------------
    async def VolumeGetOrCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        volume_id = fake.named_object("volume", req.deployment_name, _create(req.object_creation_type),
                                      fake.volumes)
        await stream.send_message(api_pb2.VolumeGetOrCreateResponse(
            volume_id=volume_id, metadata=api_pb2.VolumeMetadata(version=api_pb2.VOLUME_FS_VERSION_V1)))

    async def VolumeCommit(self, stream) -> None:
        fake, req = await _request(self, stream)
        container = fake.container_for(stream.metadata)
        if container is None or req.volume_id not in container.mounts:
            raise GRPCError(Status.FAILED_PRECONDITION, "commit must be called inside a container that mounts "
                                                        "the Volume")
        fake.commit(req.volume_id, container)
        await stream.send_message(api_pb2.VolumeCommitResponse(skip_reload=False))

    async def VolumeReload(self, stream) -> None:
        fake, req = await _request(self, stream)
        container = fake.container_for(stream.metadata)
        if container is None or req.volume_id not in container.mounts:
            raise GRPCError(Status.FAILED_PRECONDITION, "reload must be called inside a container that mounts "
                                                        "the Volume")
        fake.reload(req.volume_id, container)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeGetFile2(self, stream) -> None:
        fake, req = await _request(self, stream)
        data = fake.volumes[req.volume_id].get(req.path.lstrip("/"))
        if data is None:
            raise GRPCError(Status.NOT_FOUND, f"No such file: {req.path}")
        blob_id = fake.new_id("bl")
        fake.blobs[blob_id] = data  # a snapshot: what was committed when the read began
        await stream.send_message(api_pb2.VolumeGetFile2Response(
            get_urls=[f"{fake.blob_url}/blob/{blob_id}"], size=len(data), start=0, len=len(data)))

    async def VolumeListFiles(self, stream) -> None:
        fake, req = await _request(self, stream)
        prefix = req.path.strip("/")
        entries = [api_pb2.FileEntry(path=name, type=api_pb2.FileEntry.FileType.FILE, size=len(data))
                   for name, data in sorted(fake.volumes[req.volume_id].items())
                   if not prefix or name == prefix or name.startswith(prefix + "/")]
        await stream.send_message(api_pb2.VolumeListFilesResponse(entries=entries))

    async def VolumePutFiles(self, stream) -> None:
        fake, req = await _request(self, stream)
        with fake.lock:
            for file in req.files:
                fake.volumes[req.volume_id][file.filename.lstrip("/")] = fake.mount_files[file.sha256_hex]
        await stream.send_message(empty_pb2.Empty())

    async def MountPutFile(self, stream) -> None:
        fake, req = await _request(self, stream)
        if req.WhichOneof("data_oneof") == "data":
            fake.mount_files[req.sha256_hex] = req.data
        elif req.WhichOneof("data_oneof") == "data_blob_id":
            fake.mount_files[req.sha256_hex] = fake.blobs[req.data_blob_id]
        await stream.send_message(api_pb2.MountPutFileResponse(exists=req.sha256_hex in fake.mount_files))

    # --- blobs -----------------------------------------------------------------------------------
    async def BlobCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        blob_id = fake.new_id("bl")
        await stream.send_message(api_pb2.BlobCreateResponse(
            blob_ids=[blob_id], upload_urls=api_pb2.UploadUrlList(items=[f"{fake.blob_url}/blob/{blob_id}"])))

    async def BlobGet(self, stream) -> None:
        fake, req = await _request(self, stream)
        await stream.send_message(api_pb2.BlobGetResponse(download_url=f"{fake.blob_url}/blob/{req.blob_id}"))


class AppHandlers:
    # --- apps, images, mounts, secrets (deploy) ----------------------------------------------------
    async def AppGetByDeploymentName(self, stream) -> None:
        fake, req = await _request(self, stream)
        app_id = next((i for i, n in fake.app_names.items() if n == req.name and i in fake.app_tags), "")
        await stream.send_message(api_pb2.AppGetByDeploymentNameResponse(app_id=app_id))

    async def AppCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        app_id = fake.new_id("ap")
        fake.app_names[app_id] = req.description
        fake.app_objects[app_id] = {}
        await stream.send_message(api_pb2.AppCreateResponse(app_id=app_id))

    async def AppGetLayout(self, stream) -> None:
        fake, req = await _request(self, stream)
        await stream.send_message(api_pb2.AppGetLayoutResponse())

    async def AppPublish(self, stream) -> None:
        fake, req = await _request(self, stream)
        with fake.lock:
            fake.app_names[req.app_id] = req.name
            fake.app_tags[req.app_id] = req.deployment_tag
            fake.apps[req.name] = {**dict(req.function_ids), **dict(req.class_ids)}
            fake.app_meta[req.name] = dict(req.tags)
        await stream.send_message(api_pb2.AppPublishResponse(url=f"{fake.url}/apps/{req.name}"))

    async def AppClientDisconnect(self, stream) -> None:
        await _request(self, stream)
        await stream.send_message(empty_pb2.Empty())

    async def AppHeartbeat(self, stream) -> None:
        await _request(self, stream)
        await stream.send_message(empty_pb2.Empty())

    async def EnvironmentGetOrCreate(self, stream) -> None:
        await _request(self, stream)
        await stream.send_message(api_pb2.EnvironmentGetOrCreateResponse(
            environment_id="en-1", metadata=api_pb2.EnvironmentMetadata(
            name="main", settings=api_pb2.EnvironmentSettings(image_builder_version="2025.06"))))

    async def ImageGetOrCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        # "Built" at once: the image's layers are only checked on real Modal; its ENV lines are kept for
        # the containers' environment.
        image_id = fake.new_id("im")
        fake.images[image_id] = req.image
        await stream.send_message(api_pb2.ImageGetOrCreateResponse(
            image_id=image_id,
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)))

    async def MountBatchedCheckExistence(self, stream) -> None:
        fake, req = await _request(self, stream)
        missing = [h for h in req.sha256_hex_hashes if h not in fake.mount_files]
        await stream.send_message(api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing))

    async def MountGetOrCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        await stream.send_message(api_pb2.MountGetOrCreateResponse(
            mount_id=fake.new_id("mo"), handle_metadata=api_pb2.MountHandleMetadata()))

    async def SecretGetOrCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        name = req.deployment_name
        if name and name not in fake.secrets:
            raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found")
        missing = [k for k in req.required_keys if k not in fake.secrets.get(name, {})]
        if missing:
            raise GRPCError(Status.NOT_FOUND, f"Secret is missing key(s): {', '.join(missing)}")
        secret_id = fake.secret_ids.setdefault(name or fake.new_id("st"), fake.new_id("st"))
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=secret_id))

    # --- functions and classes ---------------------------------------------------------------------
    async def FunctionPrecreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        function_id = req.existing_function_id or fake.new_id("fu")
        fake.precreated[function_id] = req
        await stream.send_message(api_pb2.FunctionPrecreateResponse(
            function_id=function_id, handle_metadata=_handle(fake, function_id, req.function_name, req)))

    async def FunctionCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        function_id = req.existing_function_id or fake.new_id("fu")
        definition = req.function if req.HasField("function") else req.function_data
        pre = fake.precreated.get(function_id)
        fake.functions[function_id] = Function(function_id, fake.app_names.get(req.app_id, ""),
                                               definition.function_name, definition)
        data = req.function_data if req.HasField("function_data") else api_pb2.FunctionData(
            ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=definition)])
        await stream.send_message(api_pb2.FunctionCreateResponse(
            function_id=function_id, function=definition if req.HasField("function") else None,
            function_data=data, handle_metadata=_handle(fake, function_id, definition.function_name, pre)))

    async def ClassCreate(self, stream) -> None:
        fake, req = await _request(self, stream)
        class_id = req.existing_class_id or fake.new_id("cs")
        await stream.send_message(api_pb2.ClassCreateResponse(class_id=class_id))

    def _deployed(fake: FakeModal, app_name: str, tag: str) -> str:
        if app_name not in fake.apps:
            raise GRPCError(Status.NOT_FOUND, f"App '{app_name}' not found")
        if tag not in fake.apps[app_name]:
            raise GRPCError(Status.NOT_FOUND, f"'{tag}' not found in app '{app_name}'")
        return fake.apps[app_name][tag]

    async def ClassGet(self, stream) -> None:
        fake, req = await _request(self, stream)
        class_id = AppHandlers._deployed(fake, req.app_name, req.object_tag)
        await stream.send_message(api_pb2.ClassGetResponse(class_id=class_id))

    async def FunctionGet(self, stream) -> None:
        fake, req = await _request(self, stream)
        function_id = AppHandlers._deployed(fake, req.app_name, req.object_tag)
        function = fake.functions[function_id]
        await stream.send_message(api_pb2.FunctionGetResponse(
            function_id=function_id, function=api_pb2.FunctionData(
                ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=function.definition)]),
            handle_metadata=_handle(fake, function_id, function.tag, fake.precreated.get(function_id))))

    async def FunctionBindParams(self, stream) -> None:
        fake, req = await _request(self, stream)
        base = fake.functions[req.function_id]
        bound_id = fake.new_id("fu")
        options = {}
        if req.HasField("function_options"):
            options = {"gpu": [g.gpu_type + (f":{g.count}" if g.count > 1 else "")
                               for g in req.function_options.resources.gpu_config and
                               [req.function_options.resources.gpu_config]],
                       "params": req.serialized_params}
        fake.functions[bound_id] = Function(bound_id, base.app_name, base.tag, base.definition,
                                            options={**base.options, **options})
        await stream.send_message(api_pb2.FunctionBindParamsResponse(
            bound_function_id=bound_id,
            handle_metadata=_handle(fake, bound_id, base.tag, fake.precreated.get(req.function_id))))

    async def FunctionMap(self, stream) -> None:
        fake, req = await _request(self, stream)
        from modal._serialization import deserialize

        function = fake.functions[req.function_id]
        item = req.pipelined_inputs[0].input
        payload = fake.blobs[item.args_blob_id] if item.args_blob_id else item.args
        args, kwargs = deserialize(payload, None)
        call = Call(fake.new_id("fc"), req.function_id, item.method_name, args, kwargs, dict(function.options),
                    input_id=fake.new_id("in"))
        fake.calls[call.call_id] = call
        fake.start_call(call, function)
        await stream.send_message(api_pb2.FunctionMapResponse(
            function_call_id=call.call_id,
            pipelined_inputs=[api_pb2.FunctionPutInputsResponseItem(idx=0, input_id=call.input_id)]))

    async def FunctionGetOutputs(self, stream) -> None:
        fake, req = await _request(self, stream)
        call = fake.calls[req.function_call_id]
        await asyncio.get_running_loop().run_in_executor(None, call.done.wait, max(0.0, min(req.timeout, 5.0)))
        outputs = []
        if call.result is not None:
            outputs = [api_pb2.FunctionGetOutputsItem(result=call.result, idx=0, input_id="in",
                                                      data_format=call.result_format)]
        await stream.send_message(api_pb2.FunctionGetOutputsResponse(
            outputs=outputs, last_entry_id="0-0", num_unfinished_inputs=0 if outputs else 1))

    async def FunctionCallGetDataOut(self, stream) -> None:
        fake, req = await _request(self, stream)
        call = fake.calls[req.function_call_id]
        sent = req.last_index
        while True:
            finished = call.done.is_set()
            for index in range(sent + 1, len(call.data_out) + 1):
                await stream.send_message(api_pb2.DataChunk(
                    index=index, data_format=api_pb2.DATA_FORMAT_PICKLE, data=call.data_out[index - 1]))
                sent = index
            if finished:
                return
            await asyncio.sleep(0.05)

    async def FunctionCallFromId(self, stream) -> None:
        fake, req = await _request(self, stream)
        if req.function_call_id not in fake.calls:
            raise GRPCError(Status.NOT_FOUND, f"Function call {req.function_call_id} not found")
        await stream.send_message(api_pb2.FunctionCallFromIdResponse(function_call_id=req.function_call_id,
                                                                     num_inputs=1))

    async def FunctionCallCancel(self, stream) -> None:
        fake, req = await _request(self, stream)
        fake.kill(req.function_call_id, "Function call was cancelled by the user",
                  status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
        await stream.send_message(empty_pb2.Empty())


def _handle(fake: FakeModal, function_id: str, name: str, pre: Any) -> api_pb2.FunctionHandleMetadata:
    formats = [api_pb2.DATA_FORMAT_PICKLE]
    metadata = api_pb2.FunctionHandleMetadata(
        function_name=name, function_type=getattr(pre, "function_type", 0),
        supported_input_formats=formats, supported_output_formats=formats)
    function = fake.functions.get(function_id)
    if function is not None and function.definition.HasField("class_parameter_info"):
        metadata.class_parameter_info.CopyFrom(function.definition.class_parameter_info)
    for method, definition in (pre.method_definitions.items() if pre is not None else []):
        metadata.method_handle_metadata[method].CopyFrom(api_pb2.FunctionHandleMetadata(
            function_name=definition.function_name, function_type=definition.function_type, is_method=True,
            use_method_name=method,
            supported_input_formats=formats, supported_output_formats=formats))
    add_web_urls(fake, metadata, pre)
    return metadata


def blob_routes(fake: FakeModal) -> list:
    from aiohttp import web

    async def put(request: web.Request) -> web.Response:
        data = await request.read()
        fake.blobs[request.match_info["blob_id"]] = data
        return web.Response(headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def get(request: web.Request) -> web.Response:
        data = fake.blobs.get(request.match_info["blob_id"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)

    return [web.put("/blob/{blob_id}", put), web.get("/blob/{blob_id}", get)]


__all__ = ["Handlers", "blob_routes", "Call", "Function"]
