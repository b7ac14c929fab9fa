"""localpod's REST v2 shapes as pydantic models, after RunPod's OpenAPI document: request bodies
(strict: no unknown fields, no type coercion, no null where the document allows none) and the
answers' shapes. FastAPI validates with them, answers 422 from them, and builds /openapi.json
from them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from host_tools.emulators.localpod.pods import MIN_VOLUME_GB, check_env, check_image, check_port
from host_tools.emulators.localpod.volumes import MAX_NETWORK_VOLUME_GB

Cloud = Literal["SECURE", "COMMUNITY"]
PodStatus = Literal["PROVISIONING", "STARTING", "RUNNING", "EXITED", "ERROR", "TERMINATED"]
PodAction = Literal["start", "stop", "restart", "terminate"]
Availability = Literal["NONE", "LOW", "MEDIUM", "HIGH"]
TemplateCategory = Literal["CPU", "NVIDIA", "AMD"]
Port = Annotated[str, AfterValidator(check_port)]
Env = Annotated[dict[str, str], AfterValidator(check_env)]
Image = Annotated[str, AfterValidator(check_image)]
CudaVersion = Annotated[str, Field(pattern=r"^\d+\.\d+$")]


class Request(BaseModel):
    """A request body: strict JSON types, unknown fields refused, and null only for the fields
    in `nullable` (an absent field takes its default)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None and key in cls.model_fields and key not in cls.nullable:
                    raise ValueError(f"{key!r} may not be null")
        return data


# -- requests --


class PersistentMount(Request):
    size: int = Field(ge=MIN_VOLUME_GB)
    path: str = Field(pattern=r"^/")


class NetworkMount(Request):
    volumeId: str
    path: str


class Mounts(Request):
    persistent: PersistentMount | None = None
    network: list[NetworkMount] | None = Field(default=None, max_length=1)


class TemplateMounts(Request):
    persistent: PersistentMount | None = None


class CreateGpuConfig(Request):
    id: str
    count: int = Field(default=1, ge=1)
    allowedCudaVersions: list[CudaVersion] | None = None
    minCudaVersion: CudaVersion | None = None


class CreateCpuConfig(Request):
    id: str = Field(min_length=1)
    vcpuCount: int = Field(ge=2)


class ContainerFields(Request):
    nullable = frozenset({"registry"})
    args: str | None = None
    disk: int | None = Field(default=None, ge=1)
    env: Env | None = None
    image: Image | None = None
    ports: list[Port] | None = None
    registry: str | None = None


class CreatePodRequest(ContainerFields):
    name: str = Field(min_length=1)
    cloud: Cloud = "SECURE"
    cpu: CreateCpuConfig | None = None
    dataCenterIds: list[str] | None = None
    globalNetworking: bool = False
    gpu: CreateGpuConfig | None = None
    mounts: Mounts | None = None
    startJupyter: bool = False
    startSsh: bool = False
    templateId: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _image_or_template(self) -> CreatePodRequest:
        if self.templateId is None and self.image is None:
            raise ValueError("'image' is required without 'templateId'")
        return self


class UpdatePodRequest(ContainerFields):
    globalNetworking: bool | None = None
    locked: bool | None = None
    mounts: Mounts | None = None
    name: str | None = Field(default=None, min_length=1)
    templateId: str | None = None


class PodActionRequest(Request):
    action: PodAction


class TemplateFields(ContainerFields):
    allowedCudaVersions: list[CudaVersion] | None = None
    mounts: TemplateMounts | None = None


class CreateTemplateRequest(TemplateFields):
    name: str = Field(min_length=1)
    image: Image
    category: TemplateCategory = "NVIDIA"
    public: bool = False
    serverless: bool = False
    startJupyter: bool = True
    startSsh: bool = True


class UpdateTemplateRequest(TemplateFields):
    name: str | None = Field(default=None, min_length=1)
    category: TemplateCategory | None = None
    public: bool | None = None
    serverless: bool | None = None
    startJupyter: bool | None = None
    startSsh: bool | None = None


class CreateRegistryRequest(Request):
    name: str = Field(min_length=1)
    password: str = Field(min_length=1)
    username: str = Field(min_length=1)


VolumeType = Literal["STANDARD", "HIGH_PERFORMANCE"]


class CreateNetworkVolumeRequest(Request):
    dataCenter: str = Field(min_length=1)
    name: str = Field(min_length=1)
    size: int = Field(ge=MIN_VOLUME_GB, le=MAX_NETWORK_VOLUME_GB)
    type: VolumeType = "STANDARD"


class UpdateNetworkVolumeRequest(Request):
    name: str | None = Field(default=None, min_length=1)
    size: int | None = Field(default=None, ge=MIN_VOLUME_GB, le=MAX_NETWORK_VOLUME_GB)

    @model_validator(mode="after")
    def _something(self) -> UpdateNetworkVolumeRequest:
        if self.name is None and self.size is None:
            raise ValueError("name or size is required")
        return self


class SetSecretRequest(Request):
    """POST /_localpod/secrets (localpod's own control: RunPod's document has no secrets
    routes; there one creates a secret in the console)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    value: str = Field(min_length=1)


class UpdateSshKeysRequest(Request):
    keys: list[Annotated[str, Field(
        pattern=r"^(ssh|ecdsa|sk)-[^\s]+ [^\s]+([ \t][^\n\r]*)?$")]]


# -- answers --


class ErrorResponse(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[str] | None = None


class GpuConfig(BaseModel):
    id: str
    count: int


class PersistentMountOut(BaseModel):
    size: int
    path: str


class NetworkMountOut(BaseModel):
    volumeId: str
    path: str


class MountsOut(BaseModel):
    """A pod's persistent volume or its network volume: the one it lacks is left out."""

    persistent: PersistentMountOut | None = None
    network: list[NetworkMountOut] | None = None

    @model_serializer(mode="wrap")
    def _present_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class SshEndpoint(BaseModel):
    host: str
    port: int
    username: str
    command: str


class PodSsh(BaseModel):
    proxy: SshEndpoint | None
    direct: SshEndpoint | None


class RuntimePort(BaseModel):
    private: int
    public: int | None
    type: str
    ip: str | None


class PodRuntime(BaseModel):
    uptime: int
    ports: list[RuntimePort]


class GlobalNetworking(BaseModel):
    enabled: bool


class PodCluster(BaseModel):
    id: str
    rank: int | None
    ip: str


class Pod(BaseModel):
    id: str
    name: str
    image: str
    args: str
    disk: int
    ports: list[str]
    env: dict[str, str]
    registry: str | None
    status: PodStatus
    actions: list[PodAction]
    mounts: MountsOut
    gpu: GpuConfig
    cloud: Cloud
    dataCenterId: str | None
    cudaVersion: str | None
    template: str | None
    cost: float
    locked: bool
    globalNetworking: GlobalNetworking
    ssh: PodSsh
    runtime: PodRuntime | None
    createdAt: str
    startedAt: str | None
    cluster: PodCluster | None = None  # a cluster's node only

    @model_serializer(mode="wrap")
    def _cluster_if_any(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        answer: dict[str, Any] = handler(self)
        if answer.get("cluster") is None:
            answer.pop("cluster", None)
        return answer


class ListPodsResponse(BaseModel):
    pods: list[Pod]


class Template(BaseModel):
    id: str
    name: str
    image: str
    args: str
    disk: int
    mounts: dict[str, PersistentMountOut]
    ports: list[str]
    env: dict[str, str]
    registry: str | None
    serverless: bool
    public: bool
    category: TemplateCategory
    startSsh: bool
    startJupyter: bool
    allowedCudaVersions: list[str]


class ListTemplatesResponse(BaseModel):
    templates: list[Template]


class Registry(BaseModel):
    id: str
    name: str


class ListRegistriesResponse(BaseModel):
    registries: list[Registry]


class NetworkVolume(BaseModel):
    id: str
    name: str
    size: int
    dataCenter: str
    type: VolumeType


class ListNetworkVolumesResponse(BaseModel):
    networkVolumes: list[NetworkVolume]


class CloudPrices(BaseModel):
    secure: float
    community: float


class CloudCounts(BaseModel):
    secure: int
    community: int


class NamedAvailability(BaseModel):
    id: str
    name: str
    availability: Availability


class CudaVersionAvailability(BaseModel):
    version: str
    available: bool


class GpuType(BaseModel):
    id: str
    name: str
    pool: str | None
    manufacturer: Literal["NVIDIA", "AMD", "UNKNOWN"]
    memory: int
    secure: bool
    community: bool
    price: CloudPrices
    maxCount: CloudCounts
    availability: Availability
    dataCenters: list[NamedAvailability]
    cudaVersions: list[CudaVersionAvailability]


class ListGpuTypesResponse(BaseModel):
    gpus: list[GpuType]


class DataCenter(BaseModel):
    id: str
    name: str
    region: str
    networkVolumeTypes: list[str]
    compliance: list[str]
    globalNetwork: bool
    gpuAvailability: list[NamedAvailability] | None = None  # answered without nulls


class ListDataCentersResponse(BaseModel):
    dataCenters: list[DataCenter]


class CpuType(BaseModel):
    id: str


class ListCpuTypesResponse(BaseModel):
    cpus: list[CpuType]


class SshKeys(BaseModel):
    keys: list[str]
